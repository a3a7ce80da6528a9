"""CLI: ``alexnet import torchvision|caffe|theano-alexnet``."""

from __future__ import annotations

from ..console import info
from ..options import Spec, make_parents

OUTPUT = Spec(path="output")
CLASSES = Spec(pattern=r".*\S.*", what="a class-list file, or comma-separated class ids")


def _done(kind: str, source: str, out) -> int:
    from ..checkpoint import load_checkpoint
    ckpt = load_checkpoint(out)
    partial = " (convolutions only: fc6-fc8 at their initialisation)" if ckpt.meta.get("partial") else ""
    info(f"imported {kind} weights from {source}: {ckpt.describe()}{partial}")
    print(out)
    return 0


def _torchvision(args) -> int:
    from .common import parse_classes_option
    from .torchvision import import_torchvision
    make_parents(args.output)
    out = import_torchvision(args.file, args.output, classes=parse_classes_option(args.classes))
    return _done("torchvision", args.file, out)


def _caffe(args) -> int:
    from .caffe import import_caffe
    from .common import parse_classes_option
    make_parents(args.output)
    out = import_caffe(args.file, args.output, mean=args.mean, classes=parse_classes_option(args.classes))
    return _done("Caffe", args.file, out)


def _theano(args) -> int:
    from .theano import import_theano_alexnet
    make_parents(args.output)
    out = import_theano_alexnet(args.folder, args.output, num_classes=args.num_classes, seed=args.seed)
    return _done("theano_alexnet", args.folder, out)


def register(sub) -> None:
    p = sub.add_parser(
        "import", help="import torchvision, Caffe or theano_alexnet weights as a checkpoint",
        description="Turn weights trained elsewhere into a checkpoint that carries its input description "
                    "and class names, so predict, eval, features and neighbors use it without being told.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", parser_class=type(p))
    kinds.required = True

    classes_help = ("class ids, one per line in a file or comma-separated (default: the ILSVRC-2012 classes "
                    "for 1000 outputs, else the index)")
    t = kinds.add_parser(
        "torchvision", help="torchvision's alexnet state dict (.pth) -> alexnet_owt",
        description="Import torchvision.models.alexnet weights (the IMAGENET1K_V1 file or a fine-tuned state dict; "
                    "the class count comes from classifier.6.weight) with torchvision's preprocessing: short side "
                    "256, centre 224, ImageNet mean/std. Read with torch.load(weights_only=True): a file that "
                    "carries code is refused.")
    t.add_argument("file", metavar="FILE.pth", type=Spec(path="file"))
    t.add_argument("-o", "--output", required=True, metavar="CKPT", type=OUTPUT,
                   help="checkpoint to write (.safetensors)")
    t.add_argument("--classes", metavar="FILE_OR_LIST", type=CLASSES, help=classes_help)
    t.set_defaults(func=_torchvision)

    c = kinds.add_parser(
        "caffe", help="BVLC bvlc_alexnet / bvlc_reference_caffenet (.caffemodel) -> alexnet / caffenet",
        description="Import a BVLC AlexNet (LRN before pooling -> alexnet with Caffe's LRN and 227 input) or "
                    "CaffeNet (pooling before LRN -> caffenet) caffemodel, current or V1 layout. conv1 is turned "
                    "from BGR to RGB; the input is 0..255 minus the mean image of --mean (BGR binaryproto or "
                    ".npy), or Caffe's channel mean B=104, G=117, R=123 without one.")
    c.add_argument("file", metavar="FILE.caffemodel", type=Spec(path="file"))
    c.add_argument("-o", "--output", required=True, metavar="CKPT", type=OUTPUT, help="checkpoint to write")
    c.add_argument("--mean", metavar="MEAN", type=Spec(path="file"),
                   help="imagenet_mean.binaryproto or ilsvrc_2012_mean.npy (BGR)")
    c.add_argument("--classes", metavar="FILE_OR_LIST", type=CLASSES, help=classes_help)
    c.set_defaults(func=_caffe)

    a = kinds.add_parser(
        "theano-alexnet", help="theano_alexnet's ImageNet-trained conv1-conv5 (.npy folder) -> partial alexnet",
        description="Import the conv1-conv5 weights released by uoguelph-mlrg/theano_alexnet (cuda-convnet c01b "
                    ".npy files, two towers, RGB mean image) into the two-tower alexnet with its conventions "
                    "(kernels flipped, 227 crop, pool then LRN k=2). fc6-fc8 stay at their initialisation: "
                    "the checkpoint is for features and fine-tuning.")
    a.add_argument("folder", metavar="DIR", type=Spec(path="dir"))
    a.add_argument("-o", "--output", required=True, metavar="CKPT", type=OUTPUT, help="checkpoint to write")
    a.add_argument("--num-classes", type=Spec(int, ge=1), default=1000, metavar="N",
                   help="size of the (untrained) fc8")
    a.add_argument("--seed", type=Spec(int, ge=0), default=0, help="seed of the fc layers' initialisation")
    a.set_defaults(func=_theano)
