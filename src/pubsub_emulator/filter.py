"""Subscription filters: parse Cloud Pub/Sub's attribute filter language once, match fast.

Grammar, as documented at https://cloud.google.com/pubsub/docs/subscription-message-filter
(the language is a subset of AIP-160, https://google.aip.dev/160)::

    filter      := [ expression ]                 -- empty (or blank) matches every message
    expression  := unary { ( AND | OR ) unary }   -- one operator kind per parenthesis level
    unary       := ( NOT | "-" ) unary | primary
    primary     := "(" expression ")"
                 | "attributes" ":" key                       -- the key is present
                 | "attributes" "." key ( "=" | "!=" ) string  -- value equals / differs
                 | "hasPrefix" "(" "attributes" "." key "," string ")"
    key         := string | bare-key                  -- bare-key: [A-Za-z0-9_-]+
    string      := '"' ... '"' | "'" ... "'"          -- with escapes, see _read_string

Rules taken from Google's page:

* Only ``attributes`` may be referenced ("You can filter messages by their attributes, but not
  by the data in the message"); ``hasPrefix`` is the only function.
* ``AND``, ``OR`` and ``NOT`` must be upper case; ``-`` is a unary alternative to ``NOT``.
  ``NOT`` binds tightest. AND and OR may only be combined with parentheses around complete
  expressions: ``a AND b OR c`` is invalid, ``a AND (b OR c)`` is valid.
* An equality must be ``attributes.KEY op "VALUE"``: a value on the left, or two keys, is invalid.
* Keys made of characters other than letters, digits, ``-`` and ``_`` must be string literals;
  backslashes, quotes and non-printing characters are written as escapes inside a literal, which
  also accepts Unicode, hexadecimal and octal escapes.
* The filter is at most 256 bytes (UTF-8).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .core.limits import MAX_FILTER_BYTES

__all__ = ["FilterError", "Predicate", "compile_filter"]

Predicate = Callable[[Mapping[str, str]], bool]

_ATTRIBUTES = "attributes"
_HAS_PREFIX = "hasPrefix"
_WHITESPACE = frozenset(" \t\r\n\f\v")
_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_BARE_KEY_CHARS = _WORD_CHARS | {"-"}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_OCTAL_DIGITS = frozenset("01234567")
_SIMPLE_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", "'": "'", '"': '"', "`": "`", "?": "?",
}


class FilterError(ValueError):
    """An invalid filter. ``position`` is the 0-based character offset of the problem."""

    def __init__(self, reason: str, position: int) -> None:
        self.reason = reason
        self.position = position
        super().__init__(f"Invalid filter: {reason} (at column {position + 1})")


def _match_all(attributes: Mapping[str, str]) -> bool:
    return True


def compile_filter(text: str) -> Predicate:
    """Compile ``text`` into a predicate over a message's attributes; raise FilterError.

    The returned callable does no parsing and no regex work: each comparison is a closure over
    precomputed constants, so evaluating it costs a handful of dict look-ups.
    """
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_FILTER_BYTES:
        raise FilterError(
            f"the filter is {size} bytes long; the maximum is {MAX_FILTER_BYTES} bytes",
            _byte_limit_position(text))
    parser = _Parser(text)
    return parser.parse()


def _byte_limit_position(text: str) -> int:
    """Index of the first character that ends beyond the byte limit."""
    used = 0
    for index, char in enumerate(text):
        used += len(char.encode("utf-8", errors="surrogatepass"))
        if used > MAX_FILTER_BYTES:
            return index
    return len(text)


# ---- predicate builders: all work that doesn't depend on the message happens here --------------

def _has_key(key: str) -> Predicate:
    def has_key(attributes: Mapping[str, str]) -> bool:
        return key in attributes
    return has_key


def _equals(key: str, value: str) -> Predicate:
    def equals(attributes: Mapping[str, str]) -> bool:
        return attributes.get(key) == value
    return equals


def _not_equals(key: str, value: str) -> Predicate:
    # Google's table: `attributes.name != "com"` selects "Messages without the name attribute
    # and the value of com", i.e. it is exactly `NOT attributes.name = "com"`, so a message that
    # lacks the key matches. Google's own fake (google-cloud-go pubsub/pstest, filtering.go)
    # implements `!=` the same way: `!(present && value == v)`.
    def not_equals(attributes: Mapping[str, str]) -> bool:
        return attributes.get(key) != value
    return not_equals


def _has_prefix(key: str, prefix: str) -> Predicate:
    # "Messages with the name attribute and a value that starts with co": absent key -> False.
    def has_prefix(attributes: Mapping[str, str]) -> bool:
        found = attributes.get(key)
        return found is not None and found.startswith(prefix)
    return has_prefix


def _negate(operand: Predicate) -> Predicate:
    def negate(attributes: Mapping[str, str]) -> bool:
        return not operand(attributes)
    return negate


def _all_of(operands: list[Predicate]) -> Predicate:
    if len(operands) == 2:
        first, second = operands

        def both(attributes: Mapping[str, str]) -> bool:
            return first(attributes) and second(attributes)
        return both
    chain = tuple(operands)

    def every(attributes: Mapping[str, str]) -> bool:
        for operand in chain:
            if not operand(attributes):
                return False
        return True
    return every


def _any_of(operands: list[Predicate]) -> Predicate:
    if len(operands) == 2:
        first, second = operands

        def either(attributes: Mapping[str, str]) -> bool:
            return first(attributes) or second(attributes)
        return either
    chain = tuple(operands)

    def some(attributes: Mapping[str, str]) -> bool:
        for operand in chain:
            if operand(attributes):
                return True
        return False
    return some


# ---- parser --------------------------------------------------------------------------------------

class _Parser:
    """Recursive-descent parser over the raw text (keys are lexed in context, so no tokenizer)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # -- helpers --

    def _error(self, reason: str, position: int | None = None) -> FilterError:
        return FilterError(reason, self.pos if position is None else position)

    def _skip_ws(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in _WHITESPACE:
            pos += 1
        self.pos = pos

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _describe_here(self) -> str:
        if self.pos >= len(self.text):
            return "the end of the filter"
        word = self._peek_word()
        return repr(word) if word else repr(self.text[self.pos])

    def _peek_word(self) -> str:
        text, end = self.text, self.pos
        while end < len(text) and text[end] in _WORD_CHARS:
            end += 1
        return text[self.pos:end]

    def _read_word(self) -> str:
        word = self._peek_word()
        self.pos += len(word)
        return word

    # -- grammar --

    def parse(self) -> Predicate:
        self._skip_ws()
        if self.pos == len(self.text):
            return _match_all  # "If empty, then no messages are filtered out."
        predicate = self._expression()
        if self.pos < len(self.text):
            if self._peek() == ")":
                raise self._error("unbalanced ')': no matching '('")
            raise self._error(self._expected_operator())
        return predicate

    def _expected_operator(self, closing: str = "the end of the filter") -> str:
        word = self._peek_word()
        if word.upper() in ("AND", "OR"):
            return f"boolean operators must be upper case: write {word.upper()!r}, not {word!r}"
        return (f"expected AND, OR or {closing}, found {self._describe_here()} "
                "(conditions must be joined with AND or OR)")

    def _expression(self) -> Predicate:
        """unary { (AND | OR) unary }, with a single operator kind per level."""
        operands = [self._unary()]
        operator = ""
        while True:
            self._skip_ws()
            word = self._peek_word()
            if word not in ("AND", "OR"):
                break
            if operator and word != operator:
                raise self._error(
                    f"{operator} and {word} cannot be mixed without parentheses; group the "
                    f"conditions, e.g. 'a {operator} (b {word} c)'")
            operator = word
            op_position = self.pos
            self.pos += len(word)
            self._skip_ws()
            if self.pos == len(self.text) or self._peek() == ")":
                raise self._error(f"missing condition after {word}", op_position)
            operands.append(self._unary())
        if len(operands) == 1:
            return operands[0]
        return _all_of(operands) if operator == "AND" else _any_of(operands)

    def _unary(self) -> Predicate:
        self._skip_ws()
        start = self.pos
        if self._peek() == "-":
            self.pos += 1
            self._skip_ws()
            self._require_operand("'-'", start)
            return _negate(self._unary())
        if self._peek_word() == "NOT":
            self.pos += 3
            self._skip_ws()
            self._require_operand("NOT", start)
            return _negate(self._unary())
        return self._primary()

    def _require_operand(self, what: str, start: int) -> None:
        if self.pos == len(self.text) or self._peek() == ")":
            raise self._error(f"{what} must be followed by a condition", start)

    def _primary(self) -> Predicate:
        self._skip_ws()
        start = self.pos
        char = self._peek()
        if char == "":
            raise self._error("unexpected end of filter: expected a condition")
        if char == "(":
            self.pos += 1
            self._skip_ws()
            if self._peek() == ")":
                raise self._error("empty parentheses: expected a condition inside '( )'")
            inner = self._expression()
            self._skip_ws()
            if self._peek() != ")":
                if self.pos == len(self.text):
                    raise self._error("unbalanced '(': missing ')'", start)
                raise self._error(self._expected_operator("')'"))
            self.pos += 1
            return inner
        if char == ")":
            raise self._error("unbalanced ')': expected a condition")
        if char in "\"'":
            self._read_string()
            raise self._error(
                "a condition must start with an attribute key ('attributes.KEY = \"VALUE\"'), "
                "not with a value", start)
        word = self._peek_word()
        if not word:
            raise self._error(f"unexpected character {char!r}: expected a condition")
        if word in ("AND", "OR"):
            raise self._error(f"missing condition before {word}")
        if word in ("and", "or", "not"):
            raise self._error(
                f"boolean operators must be upper case: write {word.upper()!r}, not {word!r}")
        self.pos += len(word)
        if word == _ATTRIBUTES:
            return self._restriction(start)
        self._skip_ws()
        if self._peek() == "(":
            if word == _HAS_PREFIX:
                return self._has_prefix_call()
            raise self._error(
                f"unknown function {word!r}: hasPrefix is the only supported function", start)
        raise self._error(
            f"unknown field {word!r}: filters can only test message attributes "
            "('attributes.KEY' or 'attributes:KEY')", start)

    def _restriction(self, start: int) -> Predicate:
        """After 'attributes': ':' key, or '.' key comparator string."""
        if self._peek() == ".":
            self.pos += 1
            key = self._read_key()
            return self._comparison(key)
        self._skip_ws()
        if self._peek() == ":":
            self.pos += 1
            self._skip_ws()
            return _has_key(self._read_key())
        if self._peek() in ("=", "!"):
            raise self._error(
                "compare an attribute's value with 'attributes.KEY = \"VALUE\"'; "
                "'attributes' alone is not a value")
        raise self._error(
            "expected 'attributes.KEY' or 'attributes:KEY' after 'attributes'", start)

    def _comparison(self, key: str) -> Predicate:
        self._skip_ws()
        text = self.text
        if text.startswith("!=", self.pos):
            self.pos += 2
            builder = _not_equals
        elif text.startswith("=", self.pos):
            self.pos += 1
            builder = _equals
        else:
            found = next((op for op in ("<=", ">=", "<", ">", ":")
                          if text.startswith(op, self.pos)), "")
            if found:
                raise self._error(
                    f"unsupported comparison operator {found!r} after 'attributes.{key}': "
                    "use '=' or '!=' (or 'attributes:KEY' to test that a key exists)")
            raise self._error(
                f"expected '=' or '!=' after 'attributes.{key}', found {self._describe_here()}")
        self._skip_ws()
        value = self._read_value()
        return builder(key, value)

    def _read_value(self) -> str:
        if self._peek() in ("\"", "'"):
            return self._read_string()
        if self.pos == len(self.text):
            raise self._error("missing value: expected a string literal such as \"value\"")
        if self._peek_word() == _ATTRIBUTES:
            raise self._error("a filter cannot compare two keys: the right-hand side must be a "
                              "string literal")
        raise self._error(
            f"expected a quoted string literal such as \"value\", found {self._describe_here()}")

    def _has_prefix_call(self) -> Predicate:
        self.pos += 1  # '('
        self._skip_ws()
        arg_start = self.pos
        if self._read_word() != _ATTRIBUTES or self._peek() != ".":
            raise self._error(
                "the first argument of hasPrefix must be an attribute key 'attributes.KEY'",
                arg_start)
        self.pos += 1
        key = self._read_key()
        self._skip_ws()
        if self._peek() != ",":
            raise self._error("expected ',' after the first argument of hasPrefix, "
                              f"found {self._describe_here()}")
        self.pos += 1
        self._skip_ws()
        if self._peek() not in ("\"", "'"):
            raise self._error("the second argument of hasPrefix must be a string literal")
        prefix = self._read_string()
        self._skip_ws()
        if self._peek() != ")":
            if self._peek() == ",":
                raise self._error("hasPrefix takes exactly two arguments")
            raise self._error(f"expected ')' to close hasPrefix, found {self._describe_here()}")
        self.pos += 1
        return _has_prefix(key, prefix)

    def _read_key(self) -> str:
        """A bare key ([A-Za-z0-9_-]+) or a string literal, starting exactly at pos."""
        if self._peek() in ("\"", "'"):
            return self._read_string()
        text, start, end = self.text, self.pos, self.pos
        while end < len(text) and text[end] in _BARE_KEY_CHARS:
            end += 1
        if end == start:
            if self._peek() == "\\":
                raise self._error("escape sequences are only allowed inside a string literal: "
                                  "write the key in quotes, e.g. attributes:\"\\u00e9\"")
            if self.pos < len(text) and not text[self.pos].isspace() and text[self.pos] not in "()":
                raise self._error(
                    f"invalid character {text[self.pos]!r} in attribute key: keys with "
                    "characters other than letters, digits, '-' and '_' must be quoted")
            raise self._error("expected an attribute key")
        if end < len(text) and (text[end] == "\\" or (
                not text[end].isspace() and text[end] not in "()=!<>:,."
                and text[end] not in _BARE_KEY_CHARS)):
            raise self._error(
                f"invalid character {text[end]!r} in attribute key: keys with characters other "
                "than letters, digits, '-' and '_' must be quoted", end)
        self.pos = end
        return text[start:end]

    def _read_string(self) -> str:
        """A quoted literal at pos; returns its decoded value.

        Escapes (the CEL/AIP-160 set): \\a \\b \\f \\n \\r \\t \\v \\\\ \\' \\" \\` \\?,
        \\xHH, \\uHHHH, \\UHHHHHHHH and three-digit octal \\OOO. Raw control characters must be
        escaped.
        """
        text = self.text
        start = self.pos
        quote = text[start]
        pos = start + 1
        out: list[str] = []
        while True:
            if pos >= len(text):
                raise self._error(f"unterminated string literal: missing closing {quote}", start)
            char = text[pos]
            if char == quote:
                self.pos = pos + 1
                return "".join(out)
            if char == "\\":
                decoded, pos = self._read_escape(pos)
                out.append(decoded)
                continue
            if char < " " or char == "\x7f":
                raise self._error(
                    f"non-printing character {char!r} in a string literal must be escaped", pos)
            out.append(char)
            pos += 1

    def _read_escape(self, pos: int) -> tuple[str, int]:
        """Decode the escape whose backslash is at pos; return (text, position after it)."""
        text = self.text
        if pos + 1 >= len(text):
            raise self._error("incomplete escape sequence at the end of the filter", pos)
        kind = text[pos + 1]
        if kind in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[kind], pos + 2
        if kind in ("x", "X", "u", "U"):
            width = {"x": 2, "X": 2, "u": 4, "U": 8}[kind]
            digits = text[pos + 2:pos + 2 + width]
            if len(digits) != width or not all(d in _HEX_DIGITS for d in digits):
                raise self._error(
                    f"invalid escape sequence: \\{kind} needs {width} hexadecimal digits", pos)
            return self._code_point(int(digits, 16), pos), pos + 2 + width
        if kind in _OCTAL_DIGITS:
            digits = text[pos + 1:pos + 4]
            if len(digits) != 3 or not all(d in _OCTAL_DIGITS for d in digits) or digits[0] > "3":
                raise self._error(
                    "invalid escape sequence: octal escapes are three digits \\000 to \\377", pos)
            return chr(int(digits, 8)), pos + 4
        raise self._error(f"invalid escape sequence \\{kind}", pos)

    def _code_point(self, value: int, pos: int) -> str:
        if 0xD800 <= value <= 0xDFFF or value > 0x10FFFF:
            raise self._error(f"invalid escape sequence: U+{value:04X} is not a valid code point",
                              pos)
        return chr(value)
