"""Data sources of an audit: folders (ImageFolder's order and labels), CSV and Parquet manifests."""

import os

import numpy as np
import pytest

from cnnlens.audit.sources import read_source
from cnnlens.core.errors import InvalidInputError


def touch(path, content=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(content)


def test_folder_classes_in_sorted_order_files_recursively_like_imagefolder(tmp_path):
    for name in ("dog/b.png", "dog/a.JPG", "cat/deep/er/z.png", "cat/y.webp", "cat/deep/x.png", "dog/notes.txt"):
        touch(str(tmp_path / name))
    expected = [("cat/y.webp", 0), ("cat/deep/x.png", 0), ("cat/deep/er/z.png", 0), ("dog/a.JPG", 1), ("dog/b.png", 1)]
    assert [(i.path, i.label) for i in read_source(str(tmp_path)).items] == expected
    # the same as torchvision's own ImageFolder
    datasets = pytest.importorskip("torchvision.datasets")
    folder = datasets.ImageFolder(str(tmp_path), loader=lambda p: p, is_valid_file=lambda p: p.lower().endswith((".png", ".jpg", ".webp")))
    assert [(os.path.relpath(p, tmp_path), c) for p, c in folder.samples] == expected
    # hidden files and folders are skipped; images beside the class folders have no label
    for name in ("loose.png", "dog/.hidden.png", ".git/x.png", "cat/.cache/w.png"):
        touch(str(tmp_path / name))
    source = read_source(str(tmp_path))
    assert source.class_names == ["cat", "dog"]
    assert [(i.path, i.label) for i in source.items] == expected + [("loose.png", None)]
    assert [i.index for i in source.items] == list(range(6))
    assert source.items[2].file == str(tmp_path / "cat" / "deep" / "er" / "z.png")


def test_a_labels_file_maps_folder_names_to_the_models_classes(tmp_path):
    touch(str(tmp_path / "data" / "dog" / "a.png"))
    touch(str(tmp_path / "data" / "cat" / "b.png"))
    (tmp_path / "labels.txt").write_text("fish\ndog\ncat\n")
    source = read_source(str(tmp_path / "data"), str(tmp_path / "labels.txt"))
    assert [(i.path, i.label, source.label_name(i.label)) for i in source.items] == [("cat/b.png", 2, "cat"), ("dog/a.png", 1, "dog")]
    (tmp_path / "labels.txt").write_text("fish\ndog\n")
    with pytest.raises(InvalidInputError, match="'cat'.*not in the labels"):
        read_source(str(tmp_path / "data"), str(tmp_path / "labels.txt"))


def test_csv_manifest_paths_labels_and_boxes(tmp_path):
    absolute = str(tmp_path / "elsewhere.png")
    (tmp_path / "m.csv").write_text("path,label,top,left,bottom,right\n"
                                    f"img/a.png,dog,1,2,30,40\nimg/b.png,cat,,,,\n{absolute},,0,0,5.5,6\n")
    source = read_source(str(tmp_path / "m.csv"))
    assert source.class_names == ["cat", "dog"]  # names in sorted order, as for folders
    a, b, c = source.items
    assert (a.path, a.file, a.label, a.box) == ("img/a.png", os.path.join(str(tmp_path), "img/a.png"), 1, (1, 2, 30, 40))
    assert (b.label, b.box) == (0, None) and (c.path, c.file, c.label, c.box) == (absolute, absolute, None, (0, 0, 5.5, 6))
    (tmp_path / "n.csv").write_text("path,label\na.png,3\nb.png,0\n")
    assert [i.label for i in read_source(str(tmp_path / "n.csv")).items] == [3, 0]


@pytest.mark.parametrize("text, message", [
    ("file,label\na.png,1\n", "no 'path' column"),
    ("path,top,left\na.png,1,2\n", "not all of"),
    ("path,top,left,bottom,right\na.png,1,2,,4\n", "row 2 .* only part of a box"),
    ("path,top,left,bottom,right\na.png,5,2,3,4\n", "row 2 .* empty or negative box"),
    ("path\na.png\nb.png\na.png\n", "row 4 .* repeats path 'a.png' \\(first on row 2\\)"),
    ("path,label\na.png,-1\n", "not a class index"),
    ("path\n", "lists no images"),
])
def test_bad_manifests_say_what_is_wrong(tmp_path, text, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(InvalidInputError, match=message):
        read_source(str(tmp_path / "m.csv"))


def test_parquet_manifest(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"path": ["x.png", "y.png"], "label": [1, None], "top": [1.0, None], "left": [2.0, None],
                      "bottom": [3.0, None], "right": [4.0, None]})
    pq.write_table(table, str(tmp_path / "m.parquet"))
    source = read_source(str(tmp_path / "m.parquet"), labels=["a", "b"])
    assert [(i.path, i.label, i.box) for i in source.items] == [("x.png", 1, (1, 2, 3, 4)), ("y.png", None, None)]
    assert source.label_name(1) == "b"


def test_missing_or_unknown_data(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_source(str(tmp_path / "nope"))
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="neither a folder nor"):
        read_source(str(tmp_path / "data.txt"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(InvalidInputError, match="no image files"):
        read_source(str(tmp_path / "empty"))
    assert np.array_equal([1], [1])
