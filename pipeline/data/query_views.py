"""The choices of query view that the trick table and the command line offer: how the test photos' red occlusion is
filled and how many crops a multi-crop query takes. transforms.py builds the views; these names live apart from it
because every ./run.sh command builds the whole parser (the trick flags included), and transforms.py imports
albumentations and torch (1.8 s of a 2.6 s `./run.sh score`)."""

OCCLUSION_FILLS = ("none", "blendflip", "inpaint")
MULTICROPS = (0, 5, 9)  # 0 = off
