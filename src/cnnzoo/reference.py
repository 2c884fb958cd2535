"""Reference figures the zoo is checked against, as plain data, each with its source.

Two kinds of figure live here. Torchvision's are measured (torchvision 0.29.1, torch 2.14.1):
exact parameter counts and multiply-adds to three decimals at the weights' crop size. Paper
figures are quoted as printed, so each carries the tolerance of its rounding ("0.27 M" holds for
0.265-0.275 M) and the conditions it holds under (classes, input channels, input side, builder
arguments). Figures marked ``strict=False`` are kept for context: the quoted number follows a
convention or variant that torchvision's model, and so the zoo's, does not (the note says which);
:mod:`cnnzoo.analysis.verify` shows them but does not fail on them.

"FLOPs" in the CNN papers quoted here are multiply-adds, as are all MAC figures below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NUMBERS = "NUMBERS.md"
TORCHVISION = "torchvision 0.29.1 (measured with torch 2.14.1; NUMBERS.md)"
RESNET_PAPER = "He et al. 2015, Deep Residual Learning"
EFFICIENTNET_PAPER = "Tan & Le 2019, EfficientNet, Table 2"
VIT_PAPER = "Dosovitskiy et al. 2021, An Image is Worth 16x16 Words, Table 1"
CONVNEXT_PAPER = "Liu et al. 2022, A ConvNet for the 2020s, Table 1 (ImageNet-1K, 224 px)"


@dataclass(frozen=True)
class Figure:
    """One quoted number and the conditions it holds under."""

    value: float
    tolerance: float = 0.0  # absolute, in the figure's unit (parameters or multiply-adds)
    source: str = ""
    num_classes: int = 1000
    in_chans: int = 3
    input_size: int | None = None  # square side; for MACs
    kwargs: tuple[tuple[str, Any], ...] = ()  # builder arguments, e.g. (("aux_logits", False),)
    strict: bool = True
    note: str = ""

    def holds(self, measured: float) -> bool:
        return abs(measured - self.value) <= self.tolerance * (1 + 1e-9)

    @property
    def conditions(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "in_chans": self.in_chans, **dict(self.kwargs)}

    def describe(self, unit: str = "") -> str:
        if self.tolerance == 0:
            return f"{int(self.value):,}"
        scale, suffix = _scale(self.value)
        return f"{self.value / scale:g}{suffix} ± {self.tolerance / scale:g}{suffix}{unit}"


def _scale(value: float) -> tuple[float, str]:
    for scale, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " K")):
        if abs(value) >= scale:
            return scale, suffix
    return 1.0, ""


@dataclass(frozen=True)
class Reference:
    """Everything quoted for one registered model name."""

    name: str
    params: tuple[Figure, ...] = ()
    macs: tuple[Figure, ...] = ()
    crop: int | None = None  # the side torchvision's weights are evaluated at
    top1: float | None = None  # ImageNet-1K acc@1 of torchvision's DEFAULT weights
    top5: float | None = None
    min_size: int | None = None  # torchvision's meta min_size
    source: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


# --- torchvision: name, params, GMACs at the crop, crop, acc@1, acc@5, min size ---------------

TORCHVISION_TABLE: tuple[tuple[str, int, float, int, float, float, int], ...] = (
    ("alexnet", 61_100_840, 0.714, 224, 56.522, 79.066, 63),
    ("vgg11", 132_863_336, 7.609, 224, 69.020, 88.628, 32),
    ("vgg11_bn", 132_868_840, 7.609, 224, 70.370, 89.810, 32),
    ("vgg13", 133_047_848, 11.308, 224, 69.928, 89.246, 32),
    ("vgg13_bn", 133_053_736, 11.308, 224, 71.586, 90.374, 32),
    ("vgg16", 138_357_544, 15.470, 224, 71.592, 90.382, 32),
    ("vgg16_bn", 138_365_992, 15.470, 224, 73.360, 91.516, 32),
    ("vgg19", 143_667_240, 19.632, 224, 72.376, 90.876, 32),
    ("vgg19_bn", 143_678_248, 19.632, 224, 74.218, 91.842, 32),
    ("googlenet", 6_624_904, 1.498, 224, 69.778, 89.530, 15),
    ("inception_v3", 23_834_568, 5.713, 299, 77.294, 93.450, 75),
    ("resnet18", 11_689_512, 1.814, 224, 69.758, 89.078, 1),
    ("resnet34", 21_797_672, 3.664, 224, 73.314, 91.420, 1),
    ("resnet50", 25_557_032, 4.089, 224, 80.858, 95.434, 1),
    ("resnet101", 44_549_160, 7.801, 224, 81.886, 95.780, 1),
    ("resnet152", 60_192_808, 11.514, 224, 82.284, 96.002, 1),
    ("resnext50_32x4d", 25_028_904, 4.230, 224, 81.198, 95.340, 1),
    ("resnext101_32x8d", 88_791_336, 16.414, 224, 82.834, 96.228, 1),
    ("resnext101_64x4d", 83_455_272, 15.460, 224, 83.246, 96.454, 1),
    ("wide_resnet50_2", 68_883_240, 11.398, 224, 81.602, 95.758, 1),
    ("wide_resnet101_2", 126_886_696, 22.753, 224, 82.510, 96.020, 1),
    ("efficientnet_b0", 5_288_548, 0.386, 224, 77.692, 93.532, 1),
    ("efficientnet_b1", 7_794_184, 0.687, 240, 79.838, 94.934, 1),
    ("efficientnet_b2", 9_109_994, 1.088, 288, 80.608, 95.310, 1),
    ("efficientnet_b3", 12_233_232, 1.827, 300, 82.008, 96.054, 1),
    ("efficientnet_b4", 19_341_616, 4.394, 380, 83.384, 96.594, 1),
    ("efficientnet_b5", 30_389_784, 10.266, 456, 83.444, 96.628, 1),
    ("efficientnet_b6", 43_040_704, 19.068, 528, 84.008, 96.916, 1),
    ("efficientnet_b7", 66_347_960, 37.746, 600, 84.122, 96.908, 1),
    ("mobilenet_v2", 3_504_872, 0.301, 224, 72.154, 90.822, 1),
    ("mobilenet_v3_large", 5_483_032, 0.217, 224, 75.274, 92.566, 1),
    ("mobilenet_v3_small", 2_542_856, 0.057, 224, 67.668, 87.402, 1),
    ("shufflenet_v2_x0_5", 1_366_792, 0.040, 224, 60.552, 81.746, 1),
    ("shufflenet_v2_x1_0", 2_278_604, 0.145, 224, 69.362, 88.316, 1),
    ("shufflenet_v2_x1_5", 3_503_624, 0.296, 224, 72.996, 91.086, 1),
    ("shufflenet_v2_x2_0", 7_393_996, 0.583, 224, 76.230, 93.006, 1),
    # Vision Transformers at 224 px (their position embeddings fix the side: min = crop). The
    # MACs count attention's two matrix products besides the projections, as torchvision's do.
    # vit_h_14's only 224-px weights are SWAG_LINEAR_V1 (its DEFAULT, SWAG_E2E_V1, is 518 px:
    # VIT_SWAG_E2E below).
    ("vit_b_16", 86_567_656, 17.564, 224, 81.072, 95.318, 224),
    ("vit_b_32", 88_224_232, 4.409, 224, 75.912, 92.466, 224),
    ("vit_l_16", 304_326_632, 61.555, 224, 79.662, 94.638, 224),
    ("vit_l_32", 306_535_400, 15.378, 224, 76.972, 93.070, 224),
    ("vit_h_14", 632_045_800, 167.295, 224, 85.708, 97.730, 224),
    ("convnext_tiny", 28_589_128, 4.456, 224, 82.520, 96.146, 32),
    ("convnext_small", 50_223_688, 8.684, 224, 83.616, 96.650, 32),
    ("convnext_base", 88_591_464, 15.355, 224, 84.062, 96.870, 32),
    ("convnext_large", 197_767_336, 34.361, 224, 84.414, 96.976, 32),
)

# SWAG's end-to-end fine-tuned ViT weights are made at a bigger side, with as many more
# position embeddings (torchvision's meta for those weights): name, side, params, GMACs.
VIT_SWAG_E2E: tuple[tuple[str, int, int, float], ...] = (
    ("vit_b_16", 384, 86_859_496, 55.484),
    ("vit_l_16", 512, 305_174_504, 361.986),
    ("vit_h_14", 518, 633_470_440, 1016.717),
)

# The torchvision row counts GoogLeNet and Inception-v3 without their auxiliary heads.
NO_AUX = (("aux_logits", False),)
WITH_AUX_PARAMS = {"googlenet": 13_004_888, "inception_v3": 27_161_264}

# --- papers ---------------------------------------------------------------------------------

# ResNet on CIFAR-10 (Table 6). Option-A shortcuts have no parameters, so plain nets match.
# Quoted figures stay strings so that their rounding ("1.0" vs "1") is not lost.
CIFAR_RESNET_TABLE: tuple[tuple[int, int, str], ...] = (
    # depth, exact count (10 classes), the paper's figure in millions
    (20, 269_722, "0.27"),
    (32, 464_154, "0.46"),
    (44, 658_586, "0.66"),
    (56, 853_018, "0.85"),
    (110, 1_727_962, "1.7"),
    (1202, 19_421_274, "19.4"),
)

# ResNet Table 1, "FLOPs" (multiply-adds) x 1e9, and torchvision's measured counts.
RESNET_TABLE1_GMACS = {18: "1.8", 34: "3.6", 50: "3.8", 101: "7.6", 152: "11.3"}

# ViT Table 1: parameters per model size, one figure for every patch size.
VIT_TABLE1_PARAMS = {"b": "86", "l": "307", "h": "632"}

# ConvNeXt Table 1: params (M) and FLOPs (B) at 224 px.
CONVNEXT_TABLE: tuple[tuple[str, str, str], ...] = (
    ("tiny", "29", "4.5"),
    ("small", "50", "8.7"),
    ("base", "89", "15.4"),
    ("large", "198", "34.4"),
)

# EfficientNet Table 2: params (M), FLOPs (B), and the paper's input side.
EFFICIENTNET_TABLE: tuple[tuple[str, str, str, int], ...] = (
    ("b0", "5.3", "0.39", 224),
    ("b1", "7.8", "0.70", 240),
    ("b2", "9.2", "1.0", 260),
    ("b3", "12", "1.8", 300),
    ("b4", "19", "4.2", 380),
    ("b5", "30", "9.9", 456),
    ("b6", "43", "19", 528),
    ("b7", "66", "37", 600),
)


def _rounding(quoted: str) -> float:
    """Half a unit in the last quoted digit: "0.27" -> 0.005, "1.0" -> 0.05, "66" -> 0.5."""
    return 0.5 * 10.0 ** -len(quoted.partition(".")[2])


def _quoted(quoted: str, scale: float, **kwargs: Any) -> Figure:
    """A figure as printed (``quoted`` in units of ``scale``), with its rounding as tolerance."""
    kwargs.setdefault("tolerance", _rounding(quoted) * scale)
    return Figure(value=float(quoted) * scale, **kwargs)


def _build() -> dict[str, Reference]:
    refs: dict[str, dict[str, Any]] = {}

    def add(name: str, **parts: Any) -> None:
        entry = refs.setdefault(name, {"params": [], "macs": [], "notes": []})
        for key in ("params", "macs", "notes"):
            entry[key].extend(parts.pop(key, ()))
        entry.update(parts)

    for name, params, gmacs, crop, top1, top5, min_size in TORCHVISION_TABLE:
        kwargs = NO_AUX if name in WITH_AUX_PARAMS else ()
        add(
            name,
            params=[Figure(params, source=TORCHVISION, kwargs=kwargs)],
            macs=[Figure(gmacs * 1e9, 0.0005e9, source=TORCHVISION, input_size=crop)],
            crop=crop,
            top1=top1,
            top5=top5,
            min_size=min_size,
            source=TORCHVISION,
        )
    for name, params in WITH_AUX_PARAMS.items():
        add(name, params=[Figure(params, source=TORCHVISION, kwargs=(("aux_logits", True),))])

    for depth, exact, millions in CIFAR_RESNET_TABLE:
        for prefix in ("resnet", "plain"):
            if prefix == "plain" and depth == 1202:
                continue
            cifar = {"num_classes": 10, "input_size": None}
            add(
                f"{prefix}{depth}",
                params=[
                    Figure(exact, source=f"{NUMBERS}: counted, option-A shortcuts", **cifar),
                    _quoted(millions, 1e6, source=f"{RESNET_PAPER}, Table 6", **cifar),
                ],
                source=f"{RESNET_PAPER}, Table 6 (CIFAR-10)",
            )

    resnet_note = (
        "counted on the paper's own layout (ResNet v1: the bottleneck's stride in its first 1x1 "
        "conv, stride_in_1x1=True); Table 1 quotes one decimal and rounds down (34: 3.66 -> "
        "3.6), hence the 0.07 G tolerance. torchvision's v1.5 default strides the 3x3 conv."
    )
    for depth, gmacs in RESNET_TABLE1_GMACS.items():
        add(
            f"resnet{depth}",
            macs=[
                _quoted(
                    gmacs,
                    1e9,
                    tolerance=0.07e9,
                    source=f"{RESNET_PAPER}, Table 1",
                    input_size=224,
                    kwargs=(("stride_in_1x1", True),) if depth >= 50 else (),
                    note=resnet_note,
                )
            ],
        )

    for suffix, millions, billions, side in EFFICIENTNET_TABLE:
        note = "torchvision's implementation (which the zoo matches) differs slightly"
        source = EFFICIENTNET_PAPER
        add(
            f"efficientnet_{suffix}",
            params=[_quoted(millions, 1e6, source=source, strict=False, note=note)],
            macs=[_quoted(billions, 1e9, source=source, input_size=side, strict=False, note=note)],
        )

    for name, side, params, gmacs in VIT_SWAG_E2E:
        swag = {
            "source": f"{TORCHVISION}, IMAGENET1K_SWAG_E2E_V1",
            "kwargs": (("image_size", side),),
        }
        add(
            name,
            params=[Figure(params, **swag)],
            macs=[Figure(gmacs * 1e9, 0.0005e9, input_size=side, **swag)],
        )

    vit_note = (
        "Table 1 quotes one count per model size for every patch size; the patch embedding "
        "and the position embeddings (their number depends on the patch) make the difference"
    )
    for variant in ("b_16", "b_32", "l_16", "l_32", "h_14"):
        millions = VIT_TABLE1_PARAMS[variant[0]]
        add(
            f"vit_{variant}",
            params=[_quoted(millions, 1e6, source=VIT_PAPER, strict=False, note=vit_note)],
            source=VIT_PAPER,
        )

    for size, millions, billions in CONVNEXT_TABLE:
        add(
            f"convnext_{size}",
            params=[_quoted(millions, 1e6, source=CONVNEXT_PAPER)],
            macs=[_quoted(billions, 1e9, source=CONVNEXT_PAPER, input_size=224)],
        )

    # The small-image models: counted (10 classes, RGB), so that a change to them shows.
    add(
        "vit_cifar_4",
        params=[Figure(275_914, source="counted: patch 4, 8 blocks of width 64", num_classes=10)],
        source="cnnzoo (after Dosovitskiy et al. 2021)",
    )
    add(
        "convnext_cifar",
        params=[Figure(237_874, source="counted: 2x2 stem, 24-48-96 x 2 blocks", num_classes=10)],
        source="cnnzoo (after Liu et al. 2022)",
    )

    add(
        "lenet5",
        params=[
            Figure(
                61_706,
                source="LeCun et al. 1998, §II.B with a dense C3 and a 10-way output (NUMBERS.md)",
                num_classes=10,
                in_chans=1,
            )
        ],
        source="LeCun et al. 1998",
    )
    add(
        "lenet_caffe",
        params=[
            Figure(
                431_080,
                source="seed 001's Keras LeNet summary (NUMBERS.md)",
                num_classes=10,
                in_chans=1,
            )
        ],
        notes=["28x28x1 input"],
        source="Caffe/Keras LeNet",
    )
    add(
        "alexnet_v1",
        params=[
            Figure(60_965_224, source="counted: the paper's layers, two-GPU split as groups=2"),
            Figure(
                60e6,
                1e6,
                source="Krizhevsky et al. 2012: '60 million parameters'",
                strict=False,
                note="the paper's round figure",
            ),
        ],
        source="Krizhevsky et al. 2012",
    )
    add(
        "se_resnet50",
        params=[
            Figure(28_088_024, source="counted: ResNet-50 v1 + SE blocks, reduction 16"),
            _quoted("28.1", 1e6, source="Hu et al. 2017, SE-Net, Table 2"),
        ],
        macs=[
            _quoted(
                "3.87",
                1e9,
                tolerance=0.01e9,
                source="Hu et al. 2017, SE-Net, Table 2",
                input_size=224,
                note="the paper's +0.01 G over ResNet-50 (3.86) also counts the gates' pooling "
                "and channel scaling, which a conv/matmul flop counter leaves out",
            ),
        ],
        source="Hu et al. 2017",
    )
    add(
        "mobilenet_v2",
        params=[
            _quoted(
                "3.4",
                1e6,
                source="Sandler et al. 2018, MobileNetV2, Table 4",
                strict=False,
                note="torchvision's model has 3.50 M parameters",
            )
        ],
        macs=[
            # "300M" is a round figure: read it to two significant digits.
            _quoted(
                "300", 1e6, source="Sandler et al. 2018, MobileNetV2", input_size=224, tolerance=5e6
            )
        ],
    )
    add(
        "vgg16",
        params=[_quoted("138", 1e6, source="Simonyan & Zisserman 2014, Table 2")],
        macs=[
            _quoted(
                "15.3",
                1e9,
                source=f"{RESNET_PAPER} (quoting VGG-16)",
                input_size=224,
                strict=False,
                note="the ResNet paper's count; the flop counter gives 15.470 G",
            )
        ],
    )
    add(
        "vgg19",
        params=[_quoted("144", 1e6, source="Simonyan & Zisserman 2014, Table 2")],
        macs=[_quoted("19.6", 1e9, source=f"{RESNET_PAPER} (quoting VGG-19)", input_size=224)],
    )
    add(
        "googlenet",
        macs=[_quoted("1.5", 1e9, source="Szegedy et al. 2014: '1.5 billion'", input_size=224)],
    )
    add(
        "wrn28_10",
        params=[_quoted("36.5", 1e6, source="Zagoruyko & Komodakis 2016, Table 3", num_classes=10)],
        source="Zagoruyko & Komodakis 2016",
    )
    add(
        "preact_resnet164",
        params=[_quoted("1.7", 1e6, source="He et al. 2016, Identity Mappings", num_classes=10)],
        source="He et al. 2016",
    )

    return {
        name: Reference(
            name=name,
            params=tuple(parts.pop("params")),
            macs=tuple(parts.pop("macs")),
            notes=tuple(parts.pop("notes")),
            **parts,
        )
        for name, parts in refs.items()
    }


REFERENCES: dict[str, Reference] = _build()


def reference(name: str) -> Reference | None:
    """The figures quoted for a registered model name, or None when nothing is quoted."""
    return REFERENCES.get(name)
