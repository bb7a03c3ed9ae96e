"""The zoo specs that equal a torchvision classification model (`weights=None`, 1000
classes) to the last parameter and MAC: the ✓ of the README's zoo table.

The torchvision function is the spec's name, less a `_torchvision` suffix (which marks
torchvision's version where the paper's holds the plain name). `test_zoo.py` compares
each with torchvision itself; `test_weights.py` loads torchvision's weights into each
and compares the logits.
"""

TWINS = (
    "alexnet_torchvision",
    "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "googlenet_torchvision", "inception_v3",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
    "wide_resnet50_2", "wide_resnet101_2",
    "densenet121", "densenet161", "densenet169", "densenet201",
    "squeezenet1_0", "squeezenet1_1",
    "mobilenet_v2", "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3",
    "regnet_x_400mf", "regnet_x_800mf", "regnet_x_1_6gf", "regnet_x_3_2gf",
    "regnet_x_8gf", "regnet_x_16gf", "regnet_x_32gf",
    "mobilenet_v3_large", "mobilenet_v3_small",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
    "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
    "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf",
    "regnet_y_8gf", "regnet_y_16gf", "regnet_y_32gf",
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
    "regnet_y_128gf",
)


def torchvision_function(spec_name: str) -> str:
    """The torchvision function a twin equals.

    >>> torchvision_function("alexnet_torchvision"), torchvision_function("resnet50")
    ('alexnet', 'resnet50')
    """
    return spec_name.removesuffix("_torchvision")
