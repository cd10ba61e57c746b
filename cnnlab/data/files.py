"""A user's own images: a folder of class folders or a CSV manifest, read into a list of files and labels.

A folder follows Keras' `image_dataset_from_directory` convention:

    DIR/<class>/**/<image>              one sub-folder per class; the sorted folder names are the classes
    DIR/train/<class>/..., DIR/test/<class>/...   the same, with a fixed test set

A CSV manifest has a header row with `file` and `label` columns, and optionally `split`
(`train` or `test`, a fixed test set); file paths are relative to the CSV's folder.

Hidden files and folders (a leading dot) and files without an image extension are ignored in
a folder (a README, a .DS_Store); a file a CSV names is always read. Nothing is decoded here:
that is `cnnlab.data.cache`'s work. Every mistake in the layout is one `CnnlabError` naming
the file or folder.

Example:
    manifest = scan_folder(Path("shapes"), "configs/shapes.yaml")
    manifest.classes  # ('circle', 'square', 'triangle')
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.data.spec import IMAGE_SUFFIXES
from cnnlab.errors import CnnlabError

SPLIT_FOLDERS = ("train", "test")
CSV_COLUMNS = ("file", "label")


@dataclass
class Manifest:
    """The files of a data set, their class ids, and which belong to a fixed test set.

    Args:
        source: the folder or CSV file the user named.
        root: the folder the file paths are relative to.
        files: each file's path relative to `root` (with forward slashes), in a fixed order.
        labels: each file's class id, an index into `classes`.
        classes: the class names, sorted (folder names, or the CSV's labels).
        is_test: per file, whether it belongs to the fixed test set; None when there is none
            (a test split is then taken, `cnnlab.data.splits`).
        empty_folders: class folders that hold no image, relative to `source` ("test/wasps"):
            only a lenient scan (`strict=False`, `cnnlab data`) keeps a training one.
    """

    source: Path
    root: Path
    files: list[str]
    labels: np.ndarray
    classes: tuple[str, ...]
    is_test: np.ndarray | None
    empty_folders: tuple[str, ...] = ()

    def path(self, index: int) -> Path:
        return self.root / self.files[index]


def scan(dataset: str, path: str | None, where: str, strict: bool = True) -> Manifest:
    """The manifest of a `folder` or `csv` data set at `path` (`where`: the config, for messages).

    `strict=False` lists a folder that training would refuse, for `cnnlab data` to report on:
    empty class folders are kept as classes without images, and the same picture filed under
    two classes is left for the audit to find.
    """
    if not path:
        example = "photos/" if dataset == "folder" else "labels.csv"
        raise CnnlabError(f"{where}: data.path: a {dataset} data set needs a path, e.g. data.path: {example}")
    source = Path(path).expanduser()
    if not source.exists():
        raise CnnlabError(f"{where}: data.path: {source} does not exist.")
    if dataset == "csv":
        return scan_csv(source, where)
    return scan_folder(source, where, strict)


def scan_folder(folder: Path, where: str, strict: bool = True) -> Manifest:
    """Class folders under `folder` (or under its train/ and test/), and the images in each."""
    if not folder.is_dir():
        raise CnnlabError(
            f"{where}: data.path: {folder} is a file; a folder data set is a folder with one sub-folder "
            "per class (for a CSV of file,label rows use dataset: csv)."
        )
    top = _folders(folder)
    names = [d.name for d in top]
    if "train" in names and "test" in names:
        others = [name for name in names if name not in SPLIT_FOLDERS]
        if others:
            raise CnnlabError(
                f"{folder}: holds train/ and test/ beside other folders ({', '.join(others)}); put every "
                "class folder inside train/ and test/, or leave out train/ and test/."
            )
        train = _class_images(folder / "train")
        test = _class_images(folder / "test")
        unknown = sorted(set(test) - set(train))
        if unknown:
            raise CnnlabError(
                f"{folder / 'test'}: class folder {unknown[0]!r} has no counterpart in {folder / 'train'} "
                f"(classes there: {', '.join(sorted(train))})."
            )
        if not any(test.values()):
            raise CnnlabError(f"{folder / 'test'}: the test folder holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        root = folder
        groups = [(name, "train/" + name, files, False) for name, files in train.items()]
        groups += [(name, "test/" + name, files, True) for name, files in test.items()]
    else:
        classes = _class_images(folder)
        root = folder
        groups = [(name, name, files, False) for name, files in classes.items()]
    class_names = tuple(sorted({name for name, _, _, _ in groups}))
    _check_classes(folder, {name: files for name, _, files, is_test in groups if not is_test}, strict)
    index = {name: i for i, name in enumerate(class_names)}
    files, labels, is_test = [], [], []
    for name, prefix, found, test_part in groups:
        for relative in found:
            files.append(f"{prefix}/{relative}")
            labels.append(index[name])
            is_test.append(test_part)
    if strict:
        _check_duplicates(root, files, labels, class_names)
    has_test = any(is_test)
    return Manifest(folder, root, files, np.array(labels, dtype=np.int64), class_names,
                    np.array(is_test) if has_test else None,
                    empty_folders=tuple(prefix for _, prefix, found, _ in groups if not found))


def _folders(folder: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        raise CnnlabError(f"{folder}: cannot list the folder ({exc.strerror}).") from None
    return [Path(entry.path) for entry in entries if not entry.name.startswith(".") and _is_dir(entry)]


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError as exc:  # ELOOP: a link that points at itself
        raise CnnlabError(f"{entry.path}: cannot follow the link ({exc.strerror}).") from None


def _class_images(folder: Path) -> dict[str, list[str]]:
    """{class name: image paths relative to its class folder}, for every class folder in `folder`."""
    classes = _folders(folder)
    if not classes:
        loose = [p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        hint = (f"; it holds {len(loose)} images directly: put each class's images in a sub-folder named "
                f"after the class ({folder}/<class>/{loose[0]})") if loose else ""
        raise CnnlabError(f"{folder}: holds no class folders{hint or ' (one sub-folder of images per class)'}.")
    return {path.name: _images_under(path, "", set()) for path in classes}


def _images_under(folder: Path, prefix: str, ancestors: set[str]) -> list[str]:
    """Image files anywhere under `folder` (links followed, loops refused), as `prefix` + their path in it.

    (Strings, not Path objects, per file: a folder of 10,000 images was listed in 0.3 s, most of it pathlib's.)
    """
    real = os.path.realpath(folder)
    if real in ancestors:
        raise CnnlabError(
            f"{folder}: a symbolic link loop (it leads back to {real}, which contains it); remove the link."
        )
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        raise CnnlabError(f"{folder}: cannot list the folder ({exc.strerror}).") from None
    found = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if _is_dir(entry):
            found += _images_under(Path(entry.path), f"{prefix}{entry.name}/", ancestors | {real})
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:  # a broken link too: it fails as unreadable
            found.append(prefix + entry.name)
    return found


def _check_classes(folder: Path, classes: dict[str, list[str]], strict: bool) -> None:
    empty = [name for name, files in classes.items() if not files]
    if empty and strict:
        where = folder / "train" if (folder / "train").is_dir() and (folder / "test").is_dir() else folder
        raise CnnlabError(
            f"{where / empty[0]}: the class folder holds no images ({', '.join(IMAGE_SUFFIXES)})"
            + (f"; {len(empty) - 1} more class folders are empty too" if len(empty) > 1 else "")
            + "; add images or remove the folder."
        )
    if len(classes) < 2:
        raise CnnlabError(
            f"{folder}: only one class folder ({next(iter(classes))}); a classifier needs at least two "
            "classes, one sub-folder of images each."
        )


def _check_duplicates(root: Path, files: list[str], labels: list[int], classes: tuple[str, ...]) -> None:
    """The same picture filed under two classes (same name, same bytes) is a labelling mistake."""
    by_name: dict[str, list[int]] = defaultdict(list)
    for i, relative in enumerate(files):
        by_name[relative.rsplit("/", 1)[-1]].append(i)
    for group in by_name.values():
        if len(group) < 2 or len({labels[i] for i in group}) < 2:  # (most names are unique: no set for them)
            continue
        digests: dict[tuple, int] = {}
        for i in group:
            key = _content_key(root / files[i])
            if key is None:
                continue
            first = digests.setdefault(key, i)
            if labels[first] != labels[i]:
                raise CnnlabError(
                    f"{root}: {files[first]} and {files[i]} are the same image in two classes "
                    f"({classes[labels[first]]} and {classes[labels[i]]}); a picture belongs to one class: "
                    "remove one of them."
                )


def _content_key(path: Path) -> tuple | None:
    try:
        size = path.stat().st_size
        return size, hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError:
        return None  # unreadable: decoding reports it


def scan_csv(path: Path, where: str) -> Manifest:
    """The rows of a CSV manifest: `file`, `label` and optionally `split` (train or test)."""
    if path.is_dir():
        raise CnnlabError(f"{where}: data.path: {path} is a folder; a csv data set is a CSV file (or use dataset: folder).")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [name.strip() for name in reader.fieldnames or []]
            rows = list(reader)
    except UnicodeDecodeError:
        raise CnnlabError(f"{path}: is not a text CSV file (it is not UTF-8).") from None
    except (OSError, csv.Error) as exc:
        raise CnnlabError(f"{path}: cannot read the CSV ({exc}).") from None
    missing = [column for column in CSV_COLUMNS if column not in columns]
    if missing:
        found = ", ".join(columns) if columns else "none: the file is empty"
        raise CnnlabError(
            f"{path}: the CSV has no {missing[0]!r} column (columns found: {found}); it needs a header row "
            "with file and label (and optionally split: train or test)."
        )
    reader_columns = {name.strip(): name for name in reader.fieldnames or []}
    has_split = "split" in columns
    root = path.parent
    files, names, is_test, seen = [], [], [], {}
    for line, row in enumerate(rows, start=2):
        file = (row.get(reader_columns["file"]) or "").strip()
        label = (row.get(reader_columns["label"]) or "").strip()
        if not file or not label:
            raise CnnlabError(f"{path}: line {line}: empty {'file' if not file else 'label'}; every row needs both.")
        relative = Path(file)
        if not (root / relative).exists():
            raise CnnlabError(f"{path}: line {line}: {file} does not exist (paths are relative to {root}).")
        key = os.path.normpath(root / relative)
        if key in seen:
            raise CnnlabError(f"{path}: line {line}: {file} is listed twice (first on line {seen[key]}); list each image once.")
        seen[key] = line
        split = (row.get(reader_columns["split"]) or "train").strip().lower() if has_split else "train"
        if split not in SPLIT_FOLDERS:
            raise CnnlabError(f"{path}: line {line}: split {split!r} is not valid; use train or test (or leave it empty for train).")
        files.append(relative.as_posix())
        names.append(label)
        is_test.append(split == "test")
    if not files:
        raise CnnlabError(f"{path}: the CSV has a header but no rows.")
    classes = _sorted_labels(set(names))
    train_classes = {name for name, test in zip(names, is_test) if not test}
    if len(classes) < 2:
        raise CnnlabError(
            f"{path}: the label column has only one class ({classes[0]!r}); a classifier needs at least two."
        )
    if any(is_test) and not train_classes:
        raise CnnlabError(f"{path}: every row has split test; the training part is empty.")
    untrained = [name for name in classes if name not in train_classes]
    if untrained:
        raise CnnlabError(f"{path}: class {untrained[0]!r} has only test rows; every class needs training images.")
    index = {name: i for i, name in enumerate(classes)}
    return Manifest(path, root, files, np.array([index[name] for name in names], dtype=np.int64), classes,
                    np.array(is_test) if any(is_test) else None)


def _sorted_labels(labels: set[str]) -> tuple[str, ...]:
    """Numbers in numeric order (0, 1, ..., 10), anything else alphabetically."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return tuple(sorted(labels, key=int))
    return tuple(sorted(labels))
