"""Feature pyramid (FPN): backbone [C2..C5] -> [P2..P6], matterport's layer names."""
from keras import layers


def fpn_graph(c2, c3, c4, c5, channels: int) -> list:
    """Top-down feature pyramid -> [P2, P3, P4, P5, P6], all with ``channels``."""
    p5 = layers.Conv2D(channels, 1, name="fpn_c5p5")(c5)
    p4 = layers.Add(name="fpn_p4add")([
        layers.UpSampling2D(2, name="fpn_p5upsampled")(p5),
        layers.Conv2D(channels, 1, name="fpn_c4p4")(c4)])
    p3 = layers.Add(name="fpn_p3add")([
        layers.UpSampling2D(2, name="fpn_p4upsampled")(p4),
        layers.Conv2D(channels, 1, name="fpn_c3p3")(c3)])
    p2 = layers.Add(name="fpn_p2add")([
        layers.UpSampling2D(2, name="fpn_p3upsampled")(p3),
        layers.Conv2D(channels, 1, name="fpn_c2p2")(c2)])
    # 3x3 convs smooth the upsampling artefacts.
    p2 = layers.Conv2D(channels, 3, padding="same", name="fpn_p2")(p2)
    p3 = layers.Conv2D(channels, 3, padding="same", name="fpn_p3")(p3)
    p4 = layers.Conv2D(channels, 3, padding="same", name="fpn_p4")(p4)
    p5 = layers.Conv2D(channels, 3, padding="same", name="fpn_p5")(p5)
    # P6 only feeds the RPN (anchors of the largest scale).
    p6 = layers.MaxPooling2D(pool_size=1, strides=2, name="fpn_p6")(p5)
    return [p2, p3, p4, p5, p6]
