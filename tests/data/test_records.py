import pytest

from madcache.core.errors import DataError, UnsafePathError
from madcache.data.paths import safe_join
from madcache.data.records import Example, Text, Word, split_words


def test_split_words_spans_and_punctuation():
    words = split_words("Why isn't person1 at the t-shirt shop?")
    assert [w.text for w in words] == [
        "Why",
        "isn't",
        "person1",
        "at",
        "the",
        "t-shirt",
        "shop",
        "?",
    ]
    assert (words[1].start, words[1].end) == (4, 9)
    assert words[-1].start == len("Why isn't person1 at the t-shirt shop")


def test_text_validates_spans():
    with pytest.raises(ValueError):
        Text("a cat", (Word("cat", 0, 3),))


def test_concat_shifts_spans_and_keeps_boxes():
    q = Text(
        "Is person1 sad ?",
        (Word("Is", 0, 2), Word("person1", 3, 10, (0,)), Word("sad", 11, 14), Word("?", 15, 16)),
    )
    a = Text.from_string("No .")
    joined = q.concat(a)
    assert joined.text == "Is person1 sad ? No ."
    assert [(w.text, w.start, w.end, w.boxes) for w in joined.words[3:]] == [
        ("?", 15, 16, ()),
        ("No", 17, 19, ()),
        (".", 20, 21, ()),
    ]
    assert joined.words[1].boxes == (0,)


def test_example_texts_join_context_with_each_choice():
    ex = Example(
        id="val-1:qa",
        dataset="vcr",
        split="val",
        image_id="val-0",
        image_path="vcr1images/a.jpg",
        choices=(Text.from_string("yes"), Text.from_string("no")),
        label=0,
        category="mental",
        context=Text.from_string("Is it?"),
    )
    assert [t.text for t in ex.texts] == ["Is it? yes", "Is it? no"]
    assert ex.num_choices == 2
    plain = Example(
        id="1",
        dataset="vqa",
        split="train",
        image_id="1",
        image_path="x.jpg",
        choices=(Text.from_string("What?"),),
        label=None,
        category="what",
    )
    assert plain.texts == plain.choices


def test_safe_join_accepts_inside_and_refuses_escapes(tmp_path):
    (tmp_path / "imgs").mkdir()
    assert safe_join(tmp_path, "imgs/a.jpg") == tmp_path.resolve() / "imgs" / "a.jpg"
    for bad in ["../secret.jpg", "/etc/passwd", "imgs/../../x.jpg", ""]:
        with pytest.raises(UnsafePathError):
            safe_join(tmp_path, bad, file="train.jsonl", line=3, field="img_fn")


def test_safe_join_refuses_a_sibling_whose_name_starts_with_the_root(tmp_path):
    """`data2` is not inside `data`, though its path starts with `data`'s."""
    root, sibling = tmp_path / "data", tmp_path / "data2"
    root.mkdir()
    sibling.mkdir()
    (root / "link").symlink_to(sibling)
    (root / "file.jpg").symlink_to(sibling / "x.jpg")
    for relative in ("link/x.jpg", "file.jpg"):
        with pytest.raises(UnsafePathError, match="symlink"):
            safe_join(root, relative)
    assert safe_join(root, "./a//b.jpg") == root.resolve() / "a" / "b.jpg"


def test_safe_join_refuses_symlink_out_of_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError, match="symlink"):
        safe_join(root, "link/other.jpg")


def test_safe_join_refuses_a_symlinked_file_out_of_root_and_keeps_one_inside(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (root / "images" / "a.jpg").write_bytes(b"y")
    assert safe_join(root, "images/a.jpg") == root.resolve() / "images" / "a.jpg"
    (root / "images" / "out.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "images" / "in.jpg").symlink_to(root / "images" / "a.jpg")
    with pytest.raises(UnsafePathError, match="symlink"):
        safe_join(root, "images/out.jpg")  # its directory was resolved (and memoised) above
    assert safe_join(root, "images/in.jpg") == root.resolve() / "images" / "in.jpg"


def test_data_error_names_file_line_field():
    err = DataError(
        "object index 7 out of range (4 objects)",
        file="val.jsonl",
        line=12,
        field="answer_choices[2]",
        record_id="val-3",
    )
    assert str(err) == (
        "val.jsonl:12, field 'answer_choices[2]', id val-3: object index 7 out of range (4 objects)"
    )
