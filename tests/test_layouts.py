"""Layouts follow the competition: the sample submission's header and row order, the csv layout's image folders
(Happywhale's train.csv of bare file names), unique test ids and their clashes, and the csv keys' errors."""
import pytest

from pipeline.config import load_config
from pipeline.core.errors import UserError
from pipeline.data.layouts import CSV_DEFAULTS, load_dataset

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
