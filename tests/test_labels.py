import pytest

from pi_classifier.errors import LabelsError
from pi_classifier.labels import Labels, Namer, fit_labels, parse_labels, read_labels


def test_plain_lines():
    labels = parse_labels("background\ntench, Tinca tinca\ngoldfish\n")
    assert labels.names == ("background", "tench, Tinca tinca", "goldfish")


@pytest.mark.parametrize(
    "text", ["0: cat\n1: dog\n3: cow\n", "0  cat\n1 dog\n3   cow\n"]
)
def test_indexed_lines(text):
    labels = parse_labels(text)
    assert labels.name(0) == "cat"
    assert labels.name(1) == "dog"
    assert labels.name(2) == "class 2"
    assert labels.name(3) == "cow"


def test_repeated_index_is_an_error():
    with pytest.raises(LabelsError, match="index 1 twice"):
        parse_labels("1: a\n1: b\n")


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("\n\n")
    with pytest.raises(LabelsError, match="has no labels"):
        read_labels(path)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(LabelsError, match="does not exist"):
        read_labels(tmp_path / "none.txt")


def test_background_row_added_and_dropped():
    thousand = Labels(tuple(f"c{i}" for i in range(1000)))
    fitted = fit_labels(thousand, 1001)
    assert fitted.name(0) == "background" and fitted.name(1) == "c0"
    with_background = Labels(("background", *thousand.names))
    assert fit_labels(with_background, 1000).name(0) == "c0"


def test_other_mismatch_names_both_counts():
    with pytest.raises(LabelsError, match="has 10 labels but the model has 1001"):
        fit_labels(Labels(tuple("abcdefghij")), 1001, "has")


def test_real_label_file(models):
    labels = fit_labels(read_labels(models / "imagenet_labels.txt"), 1001)
    assert labels.name(286) == "Egyptian cat"
    assert labels.name(0) == "background"


def test_names_and_aliases():
    namer = Namer({"granny smith": "apple", "tench, Tinca tinca": "fish"})
    assert namer("Granny Smith") == "apple"
    assert namer("tench, Tinca tinca") == "fish"
    assert namer("goldfish, Carassius auratus") == "goldfish"
    assert Namer()("Granny Smith") == "Granny Smith"
