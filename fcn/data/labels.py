"""Label conventions shared by every dataset: the void value and the default class colours."""

#: Label value of void / boundary pixels: ignored by the loss and the metrics (VOC's 255).
IGNORE_INDEX = 255


def voc_palette() -> list[int]:
    """The 256-entry VOC colour map (flat RGB list), as in VOC's palette PNGs."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def default_colors(num_classes: int) -> list[list[int]]:
    """The first ``num_classes`` colours of the VOC colour map, as ``[r, g, b]`` lists."""
    flat = voc_palette()
    return [flat[3 * i : 3 * i + 3] for i in range(min(num_classes, 255))]


def palette_of(class_colors: list[list[int]] | None) -> list[int]:
    """A flat 768-entry PNG palette: ``class_colors`` for the classes, the VOC colour map for
    every other index (255, void, stays VOC's cream)."""
    flat = voc_palette()
    for i, color in enumerate((class_colors or [])[:255]):
        flat[3 * i : 3 * i + 3] = list(color)
    return flat
