"""Layouts follow the competition: every LAYOUTS entry loads a tiny folder of its own into the expected items, the
sample submission's header and row order, the csv layout's image folders (Happywhale's train.csv of bare file
names), unique test ids and their clashes, and the csv keys' errors."""
import pytest

from pipeline.config import load_config
from pipeline.core.errors import UserError
from pipeline.data.layouts import CSV_DEFAULTS, LAYOUTS, detect_layout, load_dataset

HW = {"layout": "csv", "csv": {"label_column": "individual_id", "train_dir": "train_images"}}


def _files(root, *names):
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"")  # listed, never decoded, by load_dataset


def _whales(root, sample="image,predictions\nt2.jpg,new_individual\nt0.jpg,new_individual\nt1.jpg,x\n"):
    _files(root, *(f"train_images/{i}.jpg" for i in range(4)), *(f"test_images/t{i}.jpg" for i in range(3)))
    (root / "train.csv").write_text("image,species,individual_id\n"
                                    + "".join(f"{i}.jpg,whale,w{i % 2}\n" for i in range(4)))
    if sample is not None:
        (root / "sample_submission.csv").write_text(sample)
    return root


# each layout: a tiny folder (files as given, a non-image among them) -> its (id, label, path) train and test items
# and submission columns, with no sample_submission.csv
LAYOUT_FOLDERS = {
    "hotelid": ({"train_images/9/c.jpg": "", "train_images/7/b.png": "", "train_images/7/a.jpg": "",
                 "train_images/7/notes.txt": "", "test_images/q1.jpg": "", "test_images/q0.jpg": ""},
                [("7/a.jpg", "7", "train_images/7/a.jpg"), ("7/b.png", "7", "train_images/7/b.png"),
                 ("9/c.jpg", "9", "train_images/9/c.jpg")],
                [("q0.jpg", None, "test_images/q0.jpg"), ("q1.jpg", None, "test_images/q1.jpg")],
                ("image_id", "hotel_id")),
    "csv": ({"train.csv": "image,label\nimgs/b.jpg,y\nimgs/a.jpg,x\n", "imgs/a.jpg": "", "imgs/b.jpg": "",
             "test_images/t1.jpg": "", "test_images/sub/t0.png": "", "test_images/readme.md": ""},
            [("imgs/b.jpg", "y", "imgs/b.jpg"), ("imgs/a.jpg", "x", "imgs/a.jpg")],  # train.csv's order
            [("t0.png", None, "test_images/sub/t0.png"), ("t1.jpg", None, "test_images/t1.jpg")],  # unique names
            ("image_id", "label")),
    "query_gallery": ({"gallery/c2/b.png": "", "gallery/c1/a.png": "", "gallery/c1/z.txt": "", "query/c1/q.png": "",
                       "query/c2/r.jpg": ""},
                      [("c1/a.png", "c1", "gallery/c1/a.png"), ("c2/b.png", "c2", "gallery/c2/b.png")],
                      [("c1/q.png", "c1", "query/c1/q.png"), ("c2/r.jpg", "c2", "query/c2/r.jpg")],  # labels kept
                      ("image_id", "label")),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_loads_its_folder_into_the_expected_items(tmp_path, name):
    assert name in LAYOUT_FOLDERS, f"layout {name}: add a tiny folder and its expected items to LAYOUT_FOLDERS"
    files, train, test, columns = LAYOUT_FOLDERS[name]
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)  # images listed, never decoded, by load_dataset
    items = lambda its: [(it.image_id, it.label, it.path.resolve()) for it in its]
    want = lambda rows: [(i, label, (tmp_path / rel).resolve()) for i, label, rel in rows]
    assert detect_layout(tmp_path) == name
    for cfg in ({"layout": name}, None):  # named, and auto-detected
        ds = load_dataset(tmp_path, cfg)
        assert items(ds.train) == want(train)
        assert items(ds.test) == want(test)
        assert (ds.id_column, ds.label_column, ds.test_ids) == (*columns, [i for i, _, _ in test])
        assert ds.classes == sorted({label for _, label, _ in train})


def test_csv_defaults_equal_default_yaml():
    assert CSV_DEFAULTS == load_config("default")["csv"]


def test_happywhale_files_unchanged(tmp_path):
    ds = load_dataset(_whales(tmp_path), HW)
    assert [(it.image_id, it.label) for it in ds.train] == [("0.jpg", "w0"), ("1.jpg", "w1"), ("2.jpg", "w0"),
                                                            ("3.jpg", "w1")]
    assert ds.train[0].path == (tmp_path / "train_images" / "0.jpg").resolve()
    assert (ds.id_column, ds.label_column) == ("image", "predictions")  # the sample's header
    assert ds.test_ids == ["t2.jpg", "t0.jpg", "t1.jpg"]  # the sample's order
    assert {it.image_id: it.path for it in ds.test}["t2.jpg"] == (tmp_path / "test_images" / "t2.jpg").resolve()


def test_csv_key_errors_name_the_fix(tmp_path):
    root = _whales(tmp_path)
    with pytest.raises(UserError) as e:
        load_dataset(root, {"layout": "csv", "csv": {"train_dir": "train_images"}})
    assert str(e.value) == (f"{root / 'train.csv'}: missing column(s) label (has: image, species, individual_id); "
                            "set csv.label_column=COLUMN (a key=value override, or the config's csv: section)")
    (root / "train.csv").write_text("image,individual_id\n0.jpg,w0\n")
    with pytest.raises(UserError, match=r"set csv.label_column=individual_id \("):  # the one other column
        load_dataset(root)
    with pytest.raises(UserError, match=r"train.csv row 2: image '0.jpg' not found .*; set csv.train_dir=train_images"):
        load_dataset(root, {"csv": {"label_column": "individual_id"}})
    (root / "test_images" / "t1.jpg").unlink()
    with pytest.raises(UserError, match=r"sample_submission.csv: image id 't1.jpg' has no test image .*1 missing"):
        load_dataset(root, HW)


@pytest.mark.parametrize("sample,needle", [
    ("image,predictions\nt0.jpg,a\nt1.jpg,a\nt0.jpg,b\n", "sample_submission.csv row 4: image id 't0.jpg' listed "
     "twice (first at row 2)"),
    ("image,predictions,extra\nt0.jpg,a,b\n", "sample_submission.csv: header is image,predictions,extra; expected two"),
    ("image\nt0.jpg\n", "header is image; expected two"),
])
def test_sample_submission_errors(tmp_path, sample, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(_whales(tmp_path, sample), HW)


def test_every_layout_takes_the_sample_header(tmp_path):
    hotel = tmp_path / "hotel"
    _files(hotel, "train_images/7/a.jpg", "test_images/q.jpg")
    assert (lambda d: (d.id_column, d.label_column, d.test_ids))(load_dataset(hotel)) == ("image_id", "hotel_id",
                                                                                         ["q.jpg"])
    (hotel / "sample_submission.csv").write_text("id,landmarks\nq.jpg,7\n")
    assert (lambda d: (d.id_column, d.label_column))(load_dataset(hotel)) == ("id", "landmarks")
    qg = tmp_path / "qg"
    _files(qg, "gallery/c/a.png", "query/c/b.png")
    assert (lambda d: (d.id_column, d.label_column))(load_dataset(qg)) == ("image_id", "label")
    (qg / "sample_submission.csv").write_text("image,predictions\nc/b.png,c\n")
    assert (lambda d: (d.id_column, d.label_column, d.test_ids))(load_dataset(qg)) == ("image", "predictions",
                                                                                      ["c/b.png"])


def test_test_ids_unique_relative_paths_when_names_repeat(tmp_path):
    root = _whales(tmp_path, sample=None)
    assert [it.image_id for it in load_dataset(root, HW).test] == ["t0.jpg", "t1.jpg", "t2.jpg"]
    _files(root, "test_images/b/t0.jpg", "test_images/a/x.jpg")
    test = load_dataset(root, HW).test  # t0.jpg twice: every id becomes its path under test_images/
    assert [it.image_id for it in test] == ["a/x.jpg", "b/t0.jpg", "t0.jpg", "t1.jpg", "t2.jpg"]
    assert test[1].path == (root / "test_images" / "b" / "t0.jpg").resolve()
    (root / "test.csv").write_text("image\nt0.jpg\nb/t0.jpg\nt1.jpg\n./t1.jpg\n")
    with pytest.raises(UserError, match=r"test.csv row 5: test image id 't1.jpg' already given by .*test.csv row 4"):
        load_dataset(root, HW)  # the clash is found at load time, not when a submission is written
    (root / "test.csv").write_text("image\nt0.jpg\nt1.jpg\n")
    (root / "sample_submission.csv").write_text("image,predictions\nt1.jpg,a\nt0.jpg,a\n")
    assert load_dataset(root, HW).test_ids == ["t1.jpg", "t0.jpg"]  # test.csv's images in the sample's order
