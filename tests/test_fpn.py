"""Feature pyramid (model/fpn.py): shapes, weight count, names."""
import keras

from colabrcnn.model.fpn import fpn_graph


def test_fpn_shapes_weights_and_names():
    cin = {2: 8, 3: 12, 4: 20, 5: 24}
    inputs = [keras.Input((64 // 2 ** (s - 2), 64 // 2 ** (s - 2), cin[s])) for s in cin]
    ch = 16
    model = keras.Model(inputs, fpn_graph(*inputs, ch))
    assert [tuple(t.shape[1:]) for t in model.outputs] == \
        [(64, 64, ch), (32, 32, ch), (16, 16, ch), (8, 8, ch), (4, 4, ch)]
    # Lateral 1x1 convs (fpn_cXpX) and smoothing 3x3 convs (fpn_pX), with biases.
    expected = sum(c * ch + ch for c in cin.values()) + 4 * (9 * ch * ch + ch)
    assert model.count_params() == expected
    names = {layer.name for layer in model.layers}
    assert {"fpn_c5p5", "fpn_c4p4", "fpn_c3p3", "fpn_c2p2", "fpn_p2", "fpn_p5",
            "fpn_p6", "fpn_p4add", "fpn_p5upsampled"} <= names
