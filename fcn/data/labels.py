"""Label conventions shared by every dataset."""

#: Label value of void / boundary pixels: ignored by the loss and the metrics (VOC's 255).
IGNORE_INDEX = 255
