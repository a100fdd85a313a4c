from csvlite.parser import parse, parse_config, split_line


def test_split_quoted_delimiter():
    assert split_line('a,"b,c",d') == ["a", "b,c", "d"]


def test_parse_rows():
    assert parse("a,b\n1,2\n") == [{"a": "1", "b": "2"}]


def test_parse_empty():
    assert parse("") == []


def test_config_sections():
    text = "name = demo\n[db]\nhost = localhost\n"
    assert parse_config(text) == {"name": "demo", "db.host": "localhost"}
