"""Subscription filter language: https://cloud.google.com/pubsub/docs/subscription-message-filter"""

from __future__ import annotations

import types
from collections.abc import Mapping

import pytest

from pubsub_emulator.filter import FilterError, compile_filter

# Named attribute sets, so the tables below stay readable.
EMPTY: dict[str, str] = {}
COM = {"name": "com"}
NET = {"name": "net"}
CO = {"name": "co"}
COM_EN = {"name": "com", "iana.org/language_tag": "en"}
NET_EN = {"name": "net", "iana.org/language_tag": "en"}
ORG_EN = {"name": "org", "iana.org/language_tag": "en"}
EN_ONLY = {"iana.org/language_tag": "en"}
OTHER = {"lang": "jp"}
EMPTY_VALUE = {"name": ""}

# (filter, attribute sets that match, attribute sets that don't)
MATCH_TABLE: list[tuple[str, list[Mapping[str, str]], list[Mapping[str, str]]]] = [
    # Empty filter: "If empty, then no messages are filtered out."
    ("", [EMPTY, COM, OTHER], []),
    ("   \t\n", [EMPTY, COM], []),
    # Existence: "attributes:name  Messages with the name attribute".
    ("attributes:name", [COM, NET, EMPTY_VALUE], [EMPTY, OTHER]),
    ("attributes : name", [COM], [OTHER]),
    ('attributes:"name"', [COM], [OTHER]),
    ("attributes:'name'", [COM], [OTHER]),
    ('attributes:"iana.org/language_tag"', [COM_EN, EN_ONLY], [COM, EMPTY]),
    # "NOT attributes:name  Messages without the name attribute".
    ("NOT attributes:name", [EMPTY, OTHER, EN_ONLY], [COM, EMPTY_VALUE]),
    ("-attributes:name", [EMPTY, OTHER], [COM]),
    # Equality: "Messages with the name attribute and the value of com". Case-sensitive.
    ('attributes.name = "com"', [COM, COM_EN], [NET, EMPTY, OTHER, {"name": "COM"}]),
    ('attributes.name="com"', [COM], [NET]),
    ("attributes.name = 'com'", [COM], [NET]),
    ('attributes."name" = "com"', [COM], [NET]),
    ('attributes.name = ""', [EMPTY_VALUE], [COM, EMPTY]),
    ('attributes."iana.org/language_tag" = "en"', [COM_EN, EN_ONLY], [COM, EMPTY]),
    ('attributes.ce-type = "x"', [{"ce-type": "x"}], [{"ce_type": "x"}]),
    ('attributes.key_1 = "v"', [{"key_1": "v"}], [{"key_1": "w"}]),
    ('attributes."key with spaces" = "v"', [{"key with spaces": "v"}], [{"key": "v"}]),
    # Inequality. Google's table: `attributes.name != "com"` selects "Messages without the name
    # attribute and the value of com" -- the negation of `=`, so a message WITHOUT the key
    # matches (google-cloud-go's pstest fake agrees: `!(present && value == "com")`).
    ('attributes.name != "com"', [NET, EMPTY, OTHER, EMPTY_VALUE, EN_ONLY], [COM, COM_EN]),
    ('NOT attributes.name = "com"', [NET, EMPTY, OTHER], [COM]),
    # hasPrefix: "Messages with the name attribute and a value that starts with co".
    ('hasPrefix(attributes.name, "co")', [COM, CO, COM_EN], [NET, EMPTY, OTHER, {"name": "c"}]),
    ('hasPrefix(attributes.name, "")', [COM, EMPTY_VALUE], [EMPTY]),
    ('hasPrefix( attributes."iana.org/language_tag" , "e" )', [COM_EN], [COM]),
    ('hasPrefix(attributes.name, ".*")', [{"name": ".*x"}], [COM]),  # no regex semantics
    # "NOT hasPrefix(attributes.name, "co")  Messages without the name attribute and a value
    # that starts with co" -- absent key matches.
    ('NOT hasPrefix(attributes.name, "co")', [NET, EMPTY, OTHER], [COM, CO]),
    # Boolean operators: Google's examples.
    (
        'attributes:"iana.org/language_tag" AND NOT attributes.name = "com"',
        [NET_EN, ORG_EN, EN_ONLY],
        [COM_EN, COM, NET, EMPTY],
    ),
    (
        'attributes:"iana.org/language_tag" AND (attributes.name = "net" OR '
        'attributes.name = "org")',
        [NET_EN, ORG_EN],
        [COM_EN, EN_ONLY, NET, EMPTY],
    ),
    ('attributes.name = "com" AND -attributes:"iana.org/language_tag"', [COM], [COM_EN, NET]),
    # AND / OR chains of one kind need no parentheses.
    ('attributes.name = "com" OR attributes.name = "net"', [COM, NET], [CO, EMPTY]),
    (
        'attributes.name = "com" OR attributes.name = "net" OR attributes.name = "co"',
        [COM, NET, CO],
        [ORG_EN, EMPTY],
    ),
    ('attributes:name AND attributes:lang', [{"name": "a", "lang": "b"}], [COM, OTHER, EMPTY]),
    (
        'attributes:a AND attributes:b AND attributes:c',
        [{"a": "", "b": "", "c": ""}],
        [{"a": "", "b": ""}, {"b": "", "c": ""}, EMPTY],
    ),
    # NOT binds tighter than AND / OR.
    ('NOT attributes:name OR attributes.name = "co"', [EMPTY, OTHER, CO], [COM, NET]),
    ('NOT attributes:name AND attributes:lang', [OTHER], [COM, EMPTY, {"name": "x", "lang": "y"}]),
    # Parentheses and nesting.
    ("(attributes:name)", [COM], [EMPTY]),
    ("((attributes:name))", [COM], [EMPTY]),
    ('NOT (attributes:name OR attributes.lang = "jp")', [EMPTY, EN_ONLY], [COM, OTHER]),
    ('NOT(attributes:name)', [EMPTY], [COM]),
    ('-(attributes:name AND attributes:lang)', [COM, OTHER, EMPTY], [{"name": "", "lang": ""}]),
    (
        '(attributes.name = "com" OR attributes.name = "net") AND '
        '(NOT attributes:lang OR (attributes.lang = "jp" AND hasPrefix(attributes.name, "n")))',
        [COM, NET, {"name": "net", "lang": "jp"}],
        [{"name": "com", "lang": "jp"}, {"name": "net", "lang": "en"}, CO, EMPTY],
    ),
    ('NOT NOT attributes:name', [COM], [EMPTY]),
    # Whitespace (spaces, tabs, newlines) around operators and parentheses.
    ('\n( attributes:name\tAND\nattributes:lang )\n', [{"name": "", "lang": ""}], [COM]),
    # String literal escapes: backslash, quotes, Unicode, hexadecimal and octal.
    ('attributes:"\\u307F\\u3093\\u306A"', [{"みんな": "x"}], [{"u307Fu3093u306A": "x"}]),
    ('attributes:"みんな"', [{"みんな": "x"}], [EMPTY]),
    ('attributes.name = "a\\"b"', [{"name": 'a"b'}], [{"name": "a\\b"}]),
    ("attributes.name = 'a\\'b'", [{"name": "a'b"}], [{"name": "ab"}]),
    ("attributes.name = 'a\"b'", [{"name": 'a"b'}], [{"name": "ab"}]),
    ('attributes.name = "a\\\\b"', [{"name": "a\\b"}], [{"name": "ab"}]),
    ('attributes.name = "tab\\there"', [{"name": "tab\there"}], [{"name": "tab\\there"}]),
    ('attributes.name = "\\x41\\101\\u0041\\U00000041"', [{"name": "AAAA"}], [CO]),
    ('attributes.name = "\\U0001F600"', [{"name": "\U0001f600"}], [CO]),
    ('attributes.name = "é"', [{"name": "é"}], [{"name": "e"}]),
    # Keywords are only operators in operator position.
    ('attributes.AND = "x" OR attributes:NOT', [{"AND": "x"}, {"NOT": ""}], [EMPTY]),
    ('attributes:NOTE', [{"NOTE": ""}], [EMPTY]),
]


def _cases() -> list[tuple[str, Mapping[str, str], bool]]:
    cases = []
    for text, matching, non_matching in MATCH_TABLE:
        cases += [(text, attrs, True) for attrs in matching]
        cases += [(text, attrs, False) for attrs in non_matching]
    return cases


@pytest.mark.parametrize(("text", "attributes", "expected"), _cases())
def test_match(text: str, attributes: Mapping[str, str], expected: bool) -> None:
    assert compile_filter(text)(attributes) is expected


def test_predicate_accepts_any_mapping_and_is_reusable() -> None:
    predicate = compile_filter('attributes.name = "com" AND hasPrefix(attributes.lang, "e")')
    assert predicate(types.MappingProxyType({"name": "com", "lang": "en"})) is True
    assert predicate({"name": "com", "lang": "fr"}) is False
    assert predicate({"name": "com", "lang": "en"}) is True


def test_byte_limit_boundary() -> None:
    prefix = 'attributes.k = "'
    exactly = prefix + "x" * (256 - len(prefix) - 1) + '"'
    assert len(exactly.encode()) == 256
    assert compile_filter(exactly)({"k": "x" * (256 - len(prefix) - 1)}) is True
    too_long = prefix + "x" * (256 - len(prefix)) + '"'
    with pytest.raises(FilterError, match="257 bytes.*256"):
        compile_filter(too_long)


def test_byte_limit_counts_utf8_bytes_not_characters() -> None:
    prefix = 'attributes.k = "'
    text = prefix + "é" * 120 + '"'  # 138 characters, 257 bytes
    assert len(text) <= 256 < len(text.encode())
    with pytest.raises(FilterError, match="bytes"):
        compile_filter(text)


# (filter, text expected in the message, 0-based position of the problem)
INVALID_TABLE: list[tuple[str, str, int]] = [
    # Mixing AND and OR without parentheses (Google's "Invalid" example and variants).
    (
        'attributes:"iana.org/language_tag" AND attributes.name = "net" OR attributes.name = "org"',
        "cannot be mixed without parentheses",
        63,
    ),
    ("attributes:a OR attributes:b AND attributes:c", "OR and AND cannot be mixed", 29),
    ("(attributes:a AND attributes:b OR attributes:c)", "cannot be mixed", 31),
    # AND / OR combining incomplete expressions (Google's "Invalid" example).
    ('attributes.name = "com" AND ("net" OR "org")', "must start with an attribute key", 29),
    # Value on the left; two keys (Google's "Invalid" examples).
    ('"com" = attributes.name', "must start with an attribute key", 0),
    ("attributes.name = attributes.website", "cannot compare two keys", 18),
    # Escapes outside a string literal (Google's "Invalid" example).
    ("attributes:\\u307F\\u3093\\u306A", "only allowed inside a string literal", 11),
    # Non-attribute fields.
    ('data = "x"', "unknown field 'data'", 0),
    ('message.data = "x"', "unknown field 'message'", 0),
    ('publishTime = "x"', "unknown field 'publishTime'", 0),
    ('attributes:a AND orderingKey = "k"', "unknown field 'orderingKey'", 17),
    ('attribute.name = "x"', "unknown field 'attribute'", 0),
    ('Attributes.name = "x"', "unknown field 'Attributes'", 0),
    # Unknown functions / wrong use of hasPrefix.
    ('hasSuffix(attributes.name, "x")', "unknown function 'hasSuffix'", 0),
    ('hasprefix(attributes.name, "x")', "unknown function 'hasprefix'", 0),
    ('matches(attributes.name, "c.*")', "unknown function 'matches'", 0),
    ('hasPrefix(attributes.name)', "expected ','", 25),
    ('hasPrefix(attributes.name, "a", "b")', "exactly two arguments", 30),
    ('hasPrefix("x", "a")', "first argument of hasPrefix", 10),
    ('hasPrefix(attributes:name, "a")', "first argument of hasPrefix", 10),
    ("hasPrefix(attributes.name, name)", "second argument of hasPrefix", 27),
    ('hasPrefix(attributes.name, "a"', "expected ')' to close hasPrefix", 30),
    ('hasPrefix attributes.name', "unknown field 'hasPrefix'", 0),
    # Parentheses.
    ("(attributes:a", "unbalanced '('", 0),
    ("((attributes:a)", "unbalanced '('", 0),
    ("attributes:a)", "unbalanced ')'", 12),
    ("(attributes:a))", "unbalanced ')'", 14),
    (")", "unbalanced ')'", 0),
    ("()", "empty parentheses", 1),
    ("attributes:a AND ()", "empty parentheses", 18),
    # Boolean operator syntax.
    ("attributes:a and attributes:b", "must be upper case: write 'AND'", 13),
    ("attributes:a or attributes:b", "must be upper case: write 'OR'", 13),
    ("not attributes:a", "must be upper case: write 'NOT'", 0),
    ("attributes:a attributes:b", "expected AND, OR or the end of the filter", 13),
    ("attributes:a AND", "missing condition after AND", 13),
    ("attributes:a OR", "missing condition after OR", 13),
    ("(attributes:a OR)", "missing condition after OR", 14),
    ("AND attributes:a", "missing condition before AND", 0),
    ("attributes:a AND AND attributes:b", "missing condition before AND", 17),
    ("NOT", "NOT must be followed by a condition", 0),
    ("-", "'-' must be followed by a condition", 0),
    ("(NOT)", "NOT must be followed by a condition", 1),
    ("attributes:a && attributes:b", "expected AND, OR", 13),
    # Restrictions.
    ("attributes", "expected 'attributes.KEY' or 'attributes:KEY'", 0),
    ('attributes = "x"', "'attributes' alone is not a value", 11),
    ("attributes.name", "expected '=' or '!='", 15),
    ("attributes.name AND attributes:x", "expected '=' or '!='", 16),
    ('attributes.name < "x"', "unsupported comparison operator '<'", 16),
    ('attributes.name >= "x"', "unsupported comparison operator '>='", 16),
    ('attributes.name == "x"', "expected a quoted string literal", 17),
    ('attributes.name : "x"', "unsupported comparison operator ':'", 16),
    ("attributes.name = com", "expected a quoted string literal", 18),
    ("attributes.name = 1", "expected a quoted string literal", 18),
    ("attributes.name =", "missing value", 17),
    ("attributes.", "expected an attribute key", 11),
    ("attributes:", "expected an attribute key", 11),
    ('attributes.name.first = "x"', "expected '=' or '!='", 15),
    ('attributes.iana.org/tag = "x"', "expected '=' or '!='", 15),
    ('attributes.na/me = "x"', "invalid character '/' in attribute key", 13),
    ('attributes.ké = "x"', "invalid character 'é' in attribute key", 12),
    ("attributes:みんな", "invalid character 'み' in attribute key", 11),
    # String literals.
    ('attributes.name = "com', "unterminated string literal", 18),
    ("attributes:'name", "unterminated string literal", 11),
    ('attributes.name = "a\\qb"', "invalid escape sequence \\q", 20),
    ('attributes.name = "\\x4"', "\\x needs 2 hexadecimal digits", 19),
    ('attributes.name = "\\u12"', "\\u needs 4 hexadecimal digits", 19),
    ('attributes.name = "\\uD800"', "not a valid code point", 19),
    ('attributes.name = "\\U00110000"', "not a valid code point", 19),
    ('attributes.name = "\\400"', "octal escapes", 19),
    ('attributes.name = "\\12"', "octal escapes", 19),
    ('attributes.name = "a\nb"', "non-printing character", 20),
    ('attributes.name = "\\', "incomplete escape sequence", 19),
    # Stray characters.
    ("@", "unexpected character '@'", 0),
    ('attributes.name = "x" ;', "expected AND, OR", 22),
]


@pytest.mark.parametrize(("text", "message", "position"), INVALID_TABLE)
def test_invalid(text: str, message: str, position: int) -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter(text)
    error = caught.value
    assert isinstance(error, ValueError)
    assert message in str(error)
    assert error.position == position
    assert f"(at column {position + 1})" in str(error)
    assert str(error).startswith("Invalid filter: ")
