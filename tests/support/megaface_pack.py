"""A tiny MegaFace test pack written by the tests."""

from PIL import Image

PROBES = ["Zac_Efron/Zac_Efron_1.png", "Adam_Brody/Adam_Brody_3.png", "Zac_Efron/Zac_Efron_7.png",
          "Adam_Brody/Adam_Brody_9.png", "Bea_Arthur/Bea_Arthur_2.png", "Zac_Efron/Zac_Efron_8.png"]
DISTRACTORS = ["100/1001@N00/11_0.jpg", "100/1001@N00/12_0.jpg", "200/2002@N01/11_0.jpg", "300/3003@N02/5_1.jpg"]


def colour(i):
    return (i * 37 % 256, 255 - i * 11 % 256, 60 + i)


def write_pack(root, size=16, probe_noises=None, distractor_noises=None):
    """A test pack: probe i is a PNG of colour(i), distractor i a JPEG of colour(100 + i); the
    lists have a blank line after their first entry."""
    for i, path in enumerate(PROBES):
        (root / "facescrub_images" / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), colour(i)).save(root / "facescrub_images" / path)
    for i, path in enumerate(DISTRACTORS):
        (root / "megaface_images" / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), colour(100 + i)).save(root / "megaface_images" / path, quality=95)
    (root / "facescrub_lst").write_text(PROBES[0] + "\n\n" + "\n".join(PROBES[1:]) + "\n")
    (root / "megaface_lst").write_text(DISTRACTORS[0] + "\n  \n" + "\n".join(DISTRACTORS[1:]))
    if probe_noises is not None:
        (root / "facescrub_noises.txt").write_text(probe_noises)
    if distractor_noises is not None:
        (root / "megaface_noises.txt").write_text(distractor_noises)
    return root
