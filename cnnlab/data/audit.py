"""`cnnlab data`: what is in a data set, checked before it trains.

The data set is read as `train` reads it (the same listing, the same decoded-image cache, the
same test split), without TensorFlow, and every problem becomes a `Finding`:

    empty_class     a class folder without images (blocking: train refuses it)
    unreadable      a zero-byte file, a file that is not an image (blocking unless
                    data.skip_bad_images)
    imbalance       the largest class has more than IMBALANCE_RATIO x the smallest's training images
    odd_format      a file format or colour mode few files have (a GIF placeholder among JPEG photos)
    odd_size        a very long or thin image (aspect over ODD_ASPECT), or one under half the
                    training size (upscaled, blurred)
    duplicate       the same pixels twice in one class and split
    label_conflict  the same pixels in two classes (blocking)
    leakage         the same pixels in the training and the test part (blocking: the test
                    score would be a lie)
    near_duplicate  resized, re-encoded or lightly edited copies (a perceptual hash, `dhash`),
    near_leakage    ... and such copies across training and test
    preprocess      data.predict_preprocess: mnist or fashion on own data whose training images were
                    only resized (train's warning: predict would invert, crop and centre what training never did)

Exact duplicates compare the decoded images (`cnnlab.data.cache.row_digests`), so a copy
with another name or format is found; `train` warns about imbalance, label conflicts and
leakage the same way (`training_findings`) and records them in data.json.

With `out`, it writes a contact sheet per class (`contact_<class>.png`: a grid of thumbnails,
problem files framed), `class_counts.png` and `audit.json`.

Example:
    result = audit_data(Path("photos/"), out=Path("photos-audit"))
    print(result.report())
    result.usable  # False when a finding is blocking
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from cnnlab.data.balance import is_uneven
from cnnlab.data.cache import Progress, row_digests
from cnnlab.data.splits import ImageData, describe, load, select_test_files
from cnnlab.errors import CnnlabError

ODD_SHARE = 0.05  # a format or mode held by at most this share of the files is named
ODD_ASPECT = 3.0  # an image whose long side exceeds this x its short side is named
NEAR_BITS = 6  # dHash bits (of 64) two images may differ by and still be near-duplicates
MAX_NEAR_IMAGES = 30_000  # near-duplicates are compared all against all up to this many images
NEAR_SHARE_MAX = 0.2  # more near-copies than this share of the images: the hash is not telling them apart
SHEET_TILE = 80  # px: a contact sheet's thumbnail
SHEET_COLUMNS = 12
SHEET_MAX = 192  # thumbnails per class sheet (problem files first)
SHOWN = 6  # file names listed in one finding's line
AUDIT_DIR = "data_audit"  # written into a run directory audited without -o
BLOCKING = ("empty_class", "label_conflict", "leakage")  # `unreadable` blocks unless skip_bad_images


@dataclass(frozen=True)
class Finding:
    """One problem in a data set: its kind (see the module), a one-line message, the files it is about."""

    kind: str
    message: str
    files: tuple[str, ...] = ()
    blocking: bool = False

    def line(self) -> str:
        return f"{'error' if self.blocking else 'warning'}: {self.message}"


@dataclass
class Audit:
    """What `audit_data` found.

    Args:
        source: the folder or CSV read (or the built-in set's name).
        dataset: folder, csv or a built-in set.
        image: how images were decoded (the ImageSpec's image_size, color, interpolation).
        counts: {"train": {class: n}, "test": {class: n}}.
        formats: [("JPEG RGB", n), ...], most common first (own data).
        sizes: [("500x333", n), ...], most common first (own data).
        findings: every problem found; a clean data set has none.
        near_bits: the near-duplicate threshold used (None: not checked, `near_skipped` says why).
        figures: the files written.
        seconds: how long the check took.
    """

    source: str
    dataset: str
    image: dict
    counts: dict[str, dict[str, int]]
    formats: list[tuple[str, int]] = field(default_factory=list)
    sizes: list[tuple[str, int]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    near_bits: int | None = NEAR_BITS
    near_skipped: str = ""
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def blocking(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.blocking]

    @property
    def usable(self) -> bool:
        return not self.blocking

    def to_dict(self) -> dict:
        return {**asdict(self), "usable": self.usable,
                "formats": dict(self.formats), "sizes": dict(self.sizes)}

    def report(self) -> str:
        classes = list(self.counts["train"])
        total = sum(sum(split.values()) for split in self.counts.values())
        size = self.image.get("image_size")
        decoded = f"; decoded as {size[0]}x{size[1]} {self.image['color']}" if size else ""
        where = f" {self.source}" if self.source != self.dataset else ""
        lines = [f"data: {self.dataset}{where} ({total:,} images, {len(classes)} classes{decoded})"]
        width = max(len("class"), *(len(name) for name in classes))
        lines.append(f"  {'class':<{width}}  {'train':>7}  {'test':>7}")
        lines += [f"  {name:<{width}}  {self.counts['train'][name]:>7,}  {self.counts['test'].get(name, 0):>7,}"
                  for name in classes]
        if self.formats:
            lines.append("formats: " + ", ".join(f"{name} {n:,}" for name, n in self.formats))
        if self.sizes:
            shown = ", ".join(f"{name} ({n:,})" for name, n in self.sizes[:5])
            lines.append(f"sizes: {shown}" + (f", {len(self.sizes) - 5} more sizes" if len(self.sizes) > 5 else ""))
        lines.append(f"near-duplicates: dHash, at most {self.near_bits} of 64 bits apart" if self.near_bits is not None
                     else f"near-duplicates: not checked ({self.near_skipped})")
        if self.findings:
            blocking = len(self.blocking)
            lines.append(f"{len(self.findings)} findings ({blocking} blocking):")
            lines += [f"  {finding.line()}" for finding in self.findings]
        else:
            lines.append("no problems found")
        if self.figures:
            lines.append("wrote: " + ", ".join(self.figures))
        lines.append(f"checked in {self.seconds:.1f} s")
        return "\n".join(lines) + "\n"


def audit_data(target: Path, overrides: list[str] | tuple[str, ...] = (), out: Path | None = None,
               progress: Progress | None = None) -> Audit:
    """Check the data set of `target`: a config (its data section), a folder, a CSV or a run directory.

    Args:
        target: a YAML config, a folder of class folders, a CSV manifest, or a run directory
            (its config and its recorded test images; figures then go to <run>/data_audit).
        overrides: `--set key=value` for a config.
        out: the folder for the contact sheets, the class chart and audit.json (None: none
            written, except into a run directory).
        progress: the progress bar of decoding and hashing (`cnnlab.data.cache.Progress`).
    """
    started = time.perf_counter()
    settings, where, recorded, run_out = _data_settings(Path(target), overrides)
    out = out if out is not None else run_out
    info = describe(settings, where, strict=False)
    lenient = settings.model_copy(update={"skip_bad_images": True, "train_samples": None, "test_samples": None})
    data = load(lenient, info, progress, where=where)
    if recorded:  # what the run tested on; it trained on the rest (the folder may have grown since)
        readable = np.union1d(data.train, data.test)
        data = select_test_files(data, recorded, where)
        data = replace(data, train=np.setdiff1d(readable, data.test))
    names = _row_names(data)
    split = np.full(len(data.labels), "", dtype=object)
    split[data.train], split[data.test] = "train", "test"
    counts = {part: {name: int(np.sum((split == part) & (data.labels == i))) for i, name in enumerate(info.class_names)}
              for part in ("train", "test")}
    result = Audit(source=str(info.source or info.name), dataset=info.name,
                   image=info.spec.to_dict() if info.spec else {}, counts=counts)
    findings = _empty_classes(info) + _unreadable(data, settings.skip_bad_images)
    imbalance = imbalance_finding(counts["train"], set(_empty_names(info)))
    findings += [imbalance] if imbalance else []
    if info.own_data:
        headers = _headers(data, progress)
        result.formats = Counter(f"{fmt} {mode}" for fmt, mode, _, _ in headers.values()).most_common()
        result.sizes = Counter(f"{w}x{h}" for _, _, w, h in headers.values()).most_common()
        findings += _odd_formats(headers) + _odd_sizes(headers, info.spec)
    rows = np.concatenate([data.train, data.test])
    digests = row_digests(data.images, progress)
    findings += exact_duplicates(digests, rows, data.labels, split, names, info.class_names)
    if not info.own_data:  # curated digits: a 9x8 hash finds thousands of look-alike 1s, not copies
        result.near_bits, result.near_skipped = None, "a built-in set"
    elif len(rows) > MAX_NEAR_IMAGES:
        result.near_bits, result.near_skipped = None, f"more than {MAX_NEAR_IMAGES:,} images"
    else:
        near = near_duplicates(dhash(data.images, rows, progress), digests[rows], rows, data.labels, split,
                               names, info.class_names)
        if near is None:
            result.near_bits, result.near_skipped = None, (
                f"over {NEAR_SHARE_MAX:.0%} of the images hash alike, as small digits or drawings do: "
                "the hash cannot tell a copy from a look-alike here")
        else:
            findings += near
    result.findings = findings
    result.seconds = time.perf_counter() - started
    if out is not None:
        result.figures = [str(path) for path in _write_figures(result, data, names, split, Path(out))]
        result.seconds = time.perf_counter() - started
        from cnnlab.rundir import write_json

        write_json(Path(out) / "audit.json", result.to_dict())
    return result


def _data_settings(target: Path, overrides) -> tuple:
    """(the data section, its name for messages, a run's recorded test files, a run's figure folder)."""
    from cnnlab import rundir
    from cnnlab.config import DataSection, load_config

    if target.is_dir() and (target / rundir.RUN).is_file():
        record = rundir.read_json(target / rundir.DATA) if (target / rundir.DATA).is_file() else {}
        cfg = load_config(target / rundir.CONFIG, overrides)
        return cfg.data, str(target / rundir.CONFIG), record.get("test_files"), target / AUDIT_DIR
    if target.suffix.lower() in (".yaml", ".yml"):
        return load_config(target, overrides).data, str(target), None, None
    if overrides:
        raise CnnlabError(f"--set {overrides[0]}: --set changes a config; {target} is not a config (.yaml).")
    if not target.exists():
        raise CnnlabError(f"{target}: no such folder, CSV or config.")
    dataset = "folder" if target.is_dir() else "csv"
    if dataset == "csv" and target.suffix.lower() != ".csv":
        raise CnnlabError(f"{target}: give a folder of class folders, a CSV manifest (.csv) or a config (.yaml).")
    return DataSection(dataset=dataset, path=str(target)), str(target), None, None


def _row_names(data: ImageData) -> list[str]:
    if data.files is not None:
        return list(data.files)
    first_test = int(data.test[0]) if len(data.test) else len(data.labels)
    return [f"train[{i}]" if i < first_test else f"test[{i - first_test}]" for i in range(len(data.labels))]


def _empty_names(info) -> list[str]:
    manifest = info.manifest
    return [folder.rsplit("/", 1)[-1] for folder in (manifest.empty_folders if manifest else ())
            if not folder.startswith("test/")]


def _empty_classes(info) -> list[Finding]:
    manifest = info.manifest
    findings = []
    for folder in manifest.empty_folders if manifest else ():
        if folder.startswith("test/"):
            findings.append(Finding("empty_class", f"{folder}: the test class folder holds no images: "
                                    "that class is never tested", (folder,)))
        else:
            findings.append(Finding("empty_class", f"{folder}: the class folder holds no images; add images or "
                                    "remove the folder (train refuses it)", (folder,), blocking=True))
    return findings


def _unreadable(data: ImageData, skipping: bool) -> list[Finding]:
    then = "left out (data.skip_bad_images)" if skipping else "fix or remove it, or set data.skip_bad_images: true"
    return [Finding("unreadable", f"{name}: {why}; {then}", (name,), blocking=not skipping)
            for name, why in data.unreadable.items()]


def imbalance_finding(counts: dict[str, int], ignore: set[str] = frozenset()) -> Finding | None:
    """A warning when the largest class has more than IMBALANCE_RATIO x the smallest's images."""
    present = {name: n for name, n in counts.items() if name not in ignore and n > 0}
    if not is_uneven(present.values()):
        return None
    large, small = max(present, key=present.get), min(present, key=present.get)
    ratio = present[large] / present[small]
    return Finding("imbalance", f"uneven classes: {large!r} has {present[large]:,} training images, {small!r} "
                   f"{present[small]:,} ({ratio:.1f}x); train.class_weight: auto weighs them evenly")


def _headers(data: ImageData, progress: Progress | None) -> dict[str, tuple[str, str, int, int]]:
    """{file: (format, mode, width, height)} of every readable file, from its header alone."""
    from PIL import Image

    manifest = data.info.manifest
    found = {}
    for name in data.files:
        if name in data.unreadable:
            continue
        try:
            with Image.open(manifest.root / name) as image:
                found[name] = (image.format or "?", image.mode, *image.size)
        except (OSError, SyntaxError, ValueError):
            continue  # decoded all the same (the cache read it): nothing to say about its header
    return found


def _odd_formats(headers: dict) -> list[Finding]:
    kinds = Counter((fmt, mode) for fmt, mode, _, _ in headers.values())
    if len(kinds) < 2:
        return []
    (usual_format, usual_mode), usual = kinds.most_common(1)[0]
    findings = []
    for (fmt, mode), n in kinds.items():
        if n <= ODD_SHARE * len(headers):
            files = tuple(name for name, header in headers.items() if header[:2] == (fmt, mode))
            findings.append(Finding("odd_format", f"{fmt} {mode} among {usual:,} {usual_format} {usual_mode} files "
                                    f"(a placeholder or a graphic?): {_listed(files)}", files))
    return findings


def _odd_sizes(headers: dict, spec) -> list[Finding]:
    thin = tuple(name for name, (_, _, w, h) in headers.items() if max(w, h) > ODD_ASPECT * min(w, h))
    small = tuple(name for name, (_, _, w, h) in headers.items()
                  if w < spec.width / 2 and h < spec.height / 2 and name not in thin)
    findings = []
    if thin:
        sizes = ", ".join(f"{name} ({headers[name][2]}x{headers[name][3]})" for name in thin[:SHOWN])
        findings.append(Finding("odd_size", f"{len(thin)} image(s) more than {ODD_ASPECT:g}x as long as wide, "
                                f"squeezed to {spec.height}x{spec.width}: {sizes}{_more(thin)}", thin))
    if small:
        sizes = ", ".join(f"{name} ({headers[name][2]}x{headers[name][3]})" for name in small[:SHOWN])
        findings.append(Finding("odd_size", f"{len(small)} image(s) under half the training size "
                                f"{spec.height}x{spec.width}, enlarged and blurred: {sizes}{_more(small)}", small))
    return findings


def exact_duplicates(digests: np.ndarray, rows: np.ndarray, labels: np.ndarray, split: np.ndarray,
                     names: list[str], classes: tuple[str, ...], kinds=("duplicate", "label_conflict", "leakage"),
                     ) -> list[Finding]:
    """Groups of `rows` with the same pixels: in two classes, in training and test, or twice in one.

    Args:
        digests: every row's pixel digest (`row_digests`).
        rows: the rows to compare (readable training and test rows).
        labels, split: every row's class id and part ("train", "test").
        names: every row's file name.
        kinds: the kinds to report (train reports only label conflicts and leakage).
    """
    groups: dict[int, list[int]] = defaultdict(list)
    for row in rows:
        groups[int(digests[row])].append(int(row))
    findings = []
    for group in groups.values():
        if len(group) < 2:
            continue
        files = tuple(names[row] for row in group)
        group_classes = sorted({classes[labels[row]] for row in group})
        if len(group_classes) > 1:
            kind, text = "label_conflict", f"the same image in {len(group_classes)} classes ({', '.join(group_classes)})"
        elif len({split[row] for row in group}) > 1:
            kind, text = "leakage", "the same image in the training and the test part (its test score is not a test)"
        else:
            kind, text = "duplicate", f"the same image {len(group)} times in {group_classes[0]}"
        if kind in kinds:
            findings.append(Finding(kind, f"{text}: {_listed(files)}", files, blocking=kind in BLOCKING))
    return findings


def dhash(images, rows: np.ndarray, progress: Progress | None = None) -> np.ndarray:
    """The 64-bit difference hash of each row: grey, shrunk to 9x8, whether each pixel is brighter than its left one.

    Resizing, re-encoding and small edits leave most of its bits as they were (Krawetz's dHash,
    as imagehash computes it, from the decoded rows instead of the files).
    """
    from PIL import Image

    out = np.empty(len(rows), np.uint64)
    bar = progress(len(rows), f"comparing {len(rows):,} images ...") if progress else nullcontext(lambda n: None)
    with bar as update:
        for start in range(0, len(rows), 256):
            batch = images[rows[start:start + 256]]
            for j, picture in enumerate(batch[..., 0] if batch.shape[-1] == 1 else batch):
                grey = Image.fromarray(picture).convert("L")
                small = np.asarray(grey.resize((9, 8), Image.Resampling.BOX), np.int16)
                out[start + j] = np.packbits(small[:, 1:] > small[:, :-1]).view(">u8")[0]
            update(len(batch))
    return out


def near_duplicates(hashes: np.ndarray, digests: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                    split: np.ndarray, names: list[str], classes: tuple[str, ...]) -> list[Finding] | None:
    """Groups of images whose dHashes differ in at most NEAR_BITS bits, exact copies left out.

    None when more than NEAR_SHARE_MAX of the images would be near-copies: the hash then cannot
    tell a copy from a look-alike (small digits and drawings: every 1 hashes like every other).

    Args:
        hashes, digests: each of `rows`' dHash and pixel digest, in the order of `rows`.
        rows, labels, split, names, classes: as for `exact_duplicates`.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs, alike = [], np.zeros(len(rows), bool)
    for start in range(0, len(rows), 512):
        i, j = np.nonzero(np.bitwise_count(hashes[start:start + 512, None] ^ hashes[None, :]) <= NEAR_BITS)
        i += start
        keep = (i < j) & (digests[i] != digests[j])
        pairs.append((i[keep], j[keep]))
        alike[i[keep]] = alike[j[keep]] = True
        if alike.sum() > NEAR_SHARE_MAX * len(rows):
            return None
    first = np.concatenate([i for i, _ in pairs]) if pairs else np.empty(0, np.int64)
    second = np.concatenate([j for _, j in pairs]) if pairs else np.empty(0, np.int64)
    graph = coo_matrix((np.ones(len(first)), (first, second)), shape=(len(rows), len(rows)))
    _, component = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in np.flatnonzero(alike):
        groups[int(component[i])].append(int(i))
    findings = []
    for members in groups.values():
        group = [int(rows[i]) for i in members]
        files = tuple(names[row] for row in group)
        group_classes = sorted({classes[labels[row]] for row in group})
        where = f"in {len(group_classes)} classes ({', '.join(group_classes)})" if len(group_classes) > 1 \
            else f"in {group_classes[0]}"
        if len({split[row] for row in group}) > 1:
            findings.append(Finding("near_leakage", f"near-copies in the training and the test part, {where}: "
                                    f"{_listed(files)}", files))
        else:
            findings.append(Finding("near_duplicate", f"near-copies {where}: {_listed(files)}", files))
    return findings


def training_findings(data: ImageData) -> list[Finding]:
    """What `train` warns about before it trains: uneven classes, and (own data, through the cache's
    digests) label conflicts and leakage between the training and the test part."""
    classes = data.info.class_names
    counts = np.bincount(data.labels[data.train], minlength=len(classes))
    imbalance = imbalance_finding({name: int(n) for name, n in zip(classes, counts)})
    findings = [imbalance] if imbalance else []
    if data.files is not None:
        split = np.full(len(data.labels), "", dtype=object)
        split[data.train], split[data.test] = "train", "test"
        rows = np.unique(np.concatenate([data.train, data.test]))  # train_samples may repeat none, but be sure
        findings += exact_duplicates(row_digests(data.images), rows, data.labels, split, list(data.files), classes,
                                     kinds=("label_conflict", "leakage"))
    if data.info.own_data and data.info.preprocess in ("mnist", "fashion"):
        findings.append(Finding("preprocess", (
            f"data.predict_preprocess: {data.info.preprocess}: predict will prepare each picture as "
            f"{'MNIST' if data.info.preprocess == 'mnist' else 'Fashion-MNIST'} did (invert, crop, fit and centre), "
            f"but these {data.info.name} images were only resized for training; use auto unless they are "
            "already prepared that way")))
    return findings


def _listed(files) -> str:
    return ", ".join(files[:SHOWN]) + _more(files)


def _more(files) -> str:
    return f" and {len(files) - SHOWN} more" if len(files) > SHOWN else ""


def _write_figures(result: Audit, data: ImageData, names: list[str], split: np.ndarray, out: Path) -> list[Path]:
    from cnnlab.plots import plot_class_counts

    flagged: dict[str, bool] = {}
    for finding in result.findings:
        for name in finding.files:
            flagged[name] = flagged.get(name, False) or finding.blocking
    written = [plot_class_counts(result.counts, out / "class_counts.png", f"{result.dataset} {result.source}")]
    if data.info.spec is None:
        return written
    unreadable = np.array([row for row, file in enumerate(names) if file in data.unreadable], np.int64)
    every = np.concatenate([data.train, data.test, unreadable])
    for i, name in enumerate(data.info.class_names):
        rows = every[data.labels[every] == i].tolist()
        written.append(_contact_sheet(data, rows, names, split, flagged, name,
                                      out / f"contact_{_file_safe(name)}.png"))
    return written


def _contact_sheet(data: ImageData, rows: list[int], names: list[str], split: np.ndarray, flagged: dict[str, bool],
                   class_name: str, path: Path) -> Path:
    """A grid of one class's thumbnails, problem files first: red frame blocking, orange a warning,
    a blue bar under test images; an unreadable file is a grey tile with a red cross."""
    from PIL import Image, ImageDraw

    from cnnlab.rundir import atomic_path

    parts = Counter(split[row] for row in rows)
    caption = f"{class_name}: {parts['train']} train, {parts['test']} test" + (
        f" ({SHEET_MAX} shown)" if len(rows) > SHEET_MAX else "")
    rows = sorted(rows, key=lambda row: names[row] not in flagged)[:SHEET_MAX]
    columns = min(SHEET_COLUMNS, max(1, len(rows)))
    header = 22
    sheet = Image.new("RGB", (columns * SHEET_TILE, header + -(-len(rows) // columns) * SHEET_TILE), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 5), caption + "   red: blocking  orange: warning  blue bar: test", fill="black")
    readable = [row for row in rows if names[row] not in data.unreadable]
    pictures = dict(zip(readable, data.images[readable])) if readable else {}  # one read, in file order
    for k, row in enumerate(rows):
        x, y = k % columns * SHEET_TILE, header + k // columns * SHEET_TILE
        name = names[row]
        if row not in pictures:
            draw.rectangle((x + 2, y + 2, x + SHEET_TILE - 3, y + SHEET_TILE - 3), fill=(200, 200, 200))
            draw.line((x + 2, y + 2, x + SHEET_TILE - 3, y + SHEET_TILE - 3), fill="red", width=3)
            draw.line((x + 2, y + SHEET_TILE - 3, x + SHEET_TILE - 3, y + 2), fill="red", width=3)
        else:
            picture = pictures[row]
            thumb = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).convert("RGB")
            thumb.thumbnail((SHEET_TILE - 8, SHEET_TILE - 8))
            sheet.paste(thumb, (x + (SHEET_TILE - thumb.width) // 2, y + (SHEET_TILE - thumb.height) // 2))
        if name in flagged:
            draw.rectangle((x + 1, y + 1, x + SHEET_TILE - 2, y + SHEET_TILE - 2),
                           outline="red" if flagged[name] else "orange", width=3)
        if split[row] == "test":
            draw.rectangle((x + 4, y + SHEET_TILE - 6, x + SHEET_TILE - 5, y + SHEET_TILE - 3), fill=(40, 90, 220))
    with atomic_path(path, ".png") as tmp:
        sheet.save(tmp, format="PNG")
    return path


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "class"
