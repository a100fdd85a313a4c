from textkit.strings import camel_to_snake, count_words, is_palindrome, slugify, truncate, wrap


def test_slugify_basic():
    assert slugify("Hello, World!") == "hello-world"


def test_truncate_short_text_unchanged():
    assert truncate("abc", 5) == "abc"


def test_camel_to_snake_simple():
    assert camel_to_snake("fooBar") == "foo_bar"


def test_count_words():
    assert count_words("a b A") == {"a": 2, "b": 1}


def test_palindrome_simple():
    assert is_palindrome("racecar")
    assert not is_palindrome("python")


def test_wrap_basic():
    assert wrap("one two three", 9) == ["one two", "three"]
