"""Text → syntax tree (`cnndsl.lang.ast`), with Lark and the grammar in grammar/cnndsl.lark.

>>> program = parse_program("INPUT(3, 32, 32) -> CONV3-64 -> RELU")
>>> [unit.name for unit in program.net.items]
['INPUT', 'CONV3', 'RELU']
"""
from __future__ import annotations

import keyword

import functools
import re

import lark
from lark import Transformer, v_args

from . import ast
from ..errors import MAX_DIGITS, CnnDslError, Fragment, Source, did_you_mean, too_many_digits
from ..layers import KINDS, join_words
from .expand import names_a_layer
from .family import choice_base, name_choices
from ..resources import grammar_text

MAX_NESTING = 100  # brackets deeper than this are refused before Python's recursion limit is near

_OPEN = {"_LPAR": "(", "_LSQB": "[", "_LBRACE": "{"}
_CLOSE = {"_RPAR": "_LPAR", "_RSQB": "_LSQB", "_RBRACE": "_LBRACE"}
_CONTINUES_LINE = {"_ARROW", "_COMMA", "_EQUAL"}  # a line break after these continues the statement

# How the parser's expectations read in a diagnostic.
_TOKEN_WORDS = {
    "NAME": "a name", "INT": "a number", "FLOAT": "a number",
    "DIMS": "dimensions like 227x227x3",  # BRANCH: the table's joins, see _token_word
    "_ARROW": "'->'", "_LPAR": "'('", "_RPAR": "')'", "_LSQB": "'['", "_RSQB": "']'",
    "_LBRACE": "'{'", "_RBRACE": "'}'", "_COMMA": "','", "_EQUAL": "'='", "_COLON": "':'",
    "_MINUS": "'-'", "_SLASH": "'/'", "_STAR": "'*'", "_PLUS": "'+'", "_FLOORDIV": "'//'",
    "_POW": "'**'", "QMARK": "'?'", "_AS": "'as'",
    "_NL": "a line break", "$END": "the end of the text",
}


class _Unbalanced(Exception):
    def __init__(self, message, token, where=None):
        self.message, self.token = message, token
        self.where = where or (token.start_pos, token.end_pos)  # the characters at fault


# A run of digits longer than a number may be (in an INT, in DIMS `8x8x3`, in a layer head
# `CONV3x3`): refused before `int()` meets it.
_LONG_DIGITS = re.compile(r"\d{%d,}" % (MAX_DIGITS + 1))


class _LinePostlexer:
    """Drops the line breaks that do not end a statement (see the grammar's header)
    and checks that brackets pair up, so an unclosed one is reported where it opens."""

    always_accept = ("_NL",)

    def process(self, stream):
        opened: list = []
        pending = previous = None
        for token in stream:
            if token.type == "_NL":
                if not opened and previous is not None and previous.type not in _CONTINUES_LINE:
                    pending = pending or token
                continue
            self._track(token, opened)
            self._check_digits(token)
            if pending is not None and token.type != "_ARROW":
                yield pending
            pending = None
            previous = token
            yield token
        if opened:
            raise _Unbalanced(f"'{_OPEN[opened[-1].type]}' is never closed", opened[-1])

    @staticmethod
    def _check_digits(token):
        if token.type in ("INT", "DIMS", "NAME"):
            run = _LONG_DIGITS.search(token)
            if run is not None:
                raise _Unbalanced(too_many_digits(len(run.group())), token,
                                  (token.start_pos + run.start(), token.start_pos + run.end()))

    @staticmethod
    def _track(token, opened):
        if token.type in _OPEN:
            opened.append(token)
            if len(opened) > MAX_NESTING:
                raise _Unbalanced(f"brackets nested deeper than {MAX_NESTING}", token)
        elif token.type in _CLOSE:
            if not opened:
                raise _Unbalanced(f"'{token}' closes nothing", token)
            if opened[-1].type != _CLOSE[token.type]:
                top = opened[-1]
                raise _Unbalanced(f"'{token}' does not close the '{top}' opened at "
                                  f"column {top.column} of line {top.line}", token)
            opened.pop()


def _lark() -> lark.Lark:
    """The parser for the joins the layer table has now (one is added by `layers.register`)."""
    return _lark_for(tuple(join_words()))


@functools.cache
def _lark_for(joins: tuple[str, ...]) -> lark.Lark:
    # The grammar's BRANCH token lists the joins: longest first, so that no name is cut short.
    names = "|".join(re.escape(name.lower()) for name in sorted(joins, key=len, reverse=True))
    text = grammar_text()
    if "@JOINS@" not in text:
        raise RuntimeError("grammar/cnndsl.lark has no @JOINS@ for the join names")
    return lark.Lark(text.replace("@JOINS@", names), parser="lalr", lexer="basic",
                     start=["start", "net", "blockhead"], propagate_positions=True,
                     maybe_placeholders=True, postlex=_LinePostlexer(), cache=True)


def parse_program(text: str, path: str | None = None) -> ast.Program:
    """A .cnn file or inline text: block definitions, then the network chain."""
    fragment = Fragment(Source(text, path), text)
    return _parse(fragment, "start")


def parse_net(fragment: Fragment, blocks=()) -> ast.Chain:
    """A YAML `net:`; `blocks`, the names of the spec's blocks, for what a diagnostic says."""
    return _parse(fragment, "net", blocks)


def parse_block(head: Fragment, body: Fragment) -> ast.BlockDef:
    """A YAML `blocks:` entry: key `stage(c, n)`, value the chain."""
    name, params, span = _parse(head, "blockhead")
    chain = _parse(body, "net")
    return ast.BlockDef(name, params, chain, span)


def _parse(fragment: Fragment, start: str, blocks=()):
    try:
        tree = _lark().parse(fragment.text, start=start)
        return _ToAst(fragment).transform(tree)
    except _Unbalanced as e:
        raise CnnDslError(e.message, fragment.span(*e.where)) from None
    except lark.exceptions.UnexpectedInput as e:
        raise _syntax_error(e, fragment, blocks) from None
    except lark.exceptions.VisitError as e:
        if isinstance(e.orig_exc, CnnDslError):
            raise e.orig_exc from None
        raise
    except RecursionError:
        raise CnnDslError("expression nested too deeply", fragment.span(0, len(fragment.text))) from None


def _syntax_error(e: lark.exceptions.UnexpectedInput, fragment: Fragment, blocks=()) -> CnnDslError:
    text = fragment.text
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        return CnnDslError(f"unexpected character {text[e.pos_in_stream]!r}",
                           fragment.span(e.pos_in_stream, e.pos_in_stream + 1))
    token = getattr(e, "token", None)
    reserved = _reserved_word(e, token)
    if reserved is not None:
        return CnnDslError(f"'{reserved}' is a reserved word: {str(reserved).upper()}(...) is a "
                           f"branch, so '{reserved}' cannot name a block",
                           fragment.span(reserved.start_pos, reserved.end_pos))
    blocks = set(blocks) | _blocks_defined(_value_stack(e))
    unknown = _unknown_call(e, blocks)
    if unknown is not None:
        return CnnDslError(f"unknown layer or block '{unknown}'{_call_guess(str(unknown), blocks)}",
                           fragment.span(unknown.start_pos, unknown.end_pos))
    if token is None or token.type == "$END":
        end = len(text.rstrip()) or 1
        return CnnDslError(f"the text ends too early; expected {_expected(e)}",
                           fragment.span(end - 1, end))
    span = fragment.span(token.start_pos, max(token.end_pos or 0, token.start_pos + 1))
    if token.type == "QMARK":
        return CnnDslError("'?' makes the layer or group just before it optional, but here "
                           "it follows no layer or group", span)
    if token.type == "_NL":
        return CnnDslError("this line break ends the chain; to continue it, start the next "
                           "line with '->' or keep it inside brackets", span)
    return CnnDslError(f"unexpected {_describe(token)}; expected {_expected(e)}", span)


# A block named like a join (`res`, `add`, `concat`: reserved words) trips the parser just
# after the word: the parser's stack ends like one of these when the next token does not fit.
_RESERVED_MISUSE = ((("BRANCH",), None), (("BRANCH", "_LPAR"), {"INT", "FLOAT", "_RPAR"}),
                    (("BRANCH", "_LPAR", "chain", "_RPAR"), {"_EQUAL"}))


def _reserved_word(e, token):
    if token is not None and token.type == "BRANCH" and set(e.expected or ()) == {"NAME"}:
        return token  # a YAML `blocks:` key, or after a label
    stack = _value_stack(e)
    kinds = tuple(getattr(v, "type", None) or getattr(v, "data", None) for v in stack)
    for shape, after in _RESERVED_MISUSE:
        if kinds[-len(shape):] == shape and (after is None or getattr(token, "type", None) in after):
            word = stack[-len(shape)]
            # `RES()`, `ADD(3)` are branches written wrong, not block calls.
            return None if len(shape) == 2 and str(word).isupper() else word
    return None


def _value_stack(e) -> list:
    state = getattr(getattr(e, "interactive_parser", None), "parser_state", None)
    return list(state.value_stack) if state is not None else []


def _unknown_call(e, blocks):
    """`FOO(CONV3-8, ID)`: chains in the parentheses of a name that is no join. The parser
    fails inside what it reads as FOO's arguments; when FOO is neither a layer of the
    table nor a block, that name (its token) is the mistake, not the argument."""
    stack = _value_stack(e)
    closed = 0
    for i in range(len(stack) - 1, -1, -1):  # to the innermost bracket still open
        kind = getattr(stack[i], "type", None)
        if kind in _CLOSE:
            closed += 1
        elif kind in _OPEN and closed:
            closed -= 1
        elif kind in _OPEN:
            name = stack[i - 1] if kind == "_LPAR" and i else None
            if getattr(name, "type", None) != "NAME":
                return None  # a group, an {expression}, or a layer with a head: CONV3-64(...)
            known = str(name) in blocks or names_a_layer(str(name))
            return None if known else name
    return None


def _blocks_defined(stack) -> set[str]:
    """The blocks a .cnn file defined before the line being parsed."""
    return {str(d.children[0].children[0]) for item in stack if isinstance(item, lark.Tree)
            for d in item.find_data("blockdef")}


def _call_guess(name: str, blocks) -> str:
    """' — did you mean X?' from the table's words (layers and joins), then the blocks."""
    guess = did_you_mean(name, [k for k in KINDS if not KINDS[k].merge] + list(join_words()))
    if not guess:
        guess = did_you_mean(name, blocks).replace("mean", "mean the block")
    return guess or f"; the words that take chains in parentheses are {', '.join(join_words())}"


def _describe(token) -> str:
    return f"'{token}'" if token.type not in ("_NL", "$END") else _TOKEN_WORDS[token.type]


def _token_word(name: str) -> str:
    if name == "BRANCH":  # "CONCAT/ADD/RES"
        return "/".join(join_words())
    return _TOKEN_WORDS.get(name, name)


def _expected(e) -> str:
    words = sorted({_token_word(name) for name in (e.expected or ())})
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else "".join(words)


# Names a label cannot take, as each becomes an attribute of a compiled module
# (`self.layer1.conv1`): Python's keywords; the attributes of torch.nn.Module and
# torch.fx.GraphModule, class and instance (tests/test_language.py checks this list
# against torch's own); and `self` and `torch`, the names fx's generated forward uses.
RESERVED_LABELS = frozenset(keyword.kwlist) | frozenset(
    "T_destination add_module add_submodule apply bfloat16 buffers call_super_init children "
    "code compile cpu cuda delete_all_unused_submodules delete_submodule double dump_patches "
    "eval extra_repr float forward get_buffer get_extra_state get_parameter get_submodule "
    "graph half ipu load_state_dict meta modules mtia named_buffers named_children "
    "named_modules named_parameters parameters print_readable recompile "
    "register_backward_hook register_buffer register_forward_hook register_forward_pre_hook "
    "register_full_backward_hook register_full_backward_pre_hook "
    "register_load_state_dict_post_hook register_load_state_dict_pre_hook register_module "
    "register_parameter register_state_dict_post_hook register_state_dict_pre_hook "
    "requires_grad_ self set_extra_state set_submodule shape_env share_memory state_dict to "
    "to_empty to_folder torch train training type xpu zero_grad".split())


def label_problem(label: str) -> str | None:
    """Why `label` cannot name a layer or a group, or None."""
    if label.startswith("_"):
        return f"a label cannot start with '_' ('{label}'): such names are PyTorch's own"
    if label in RESERVED_LABELS:
        return (f"'{label}' cannot be a label: a compiled network's modules use that name "
                "(a Python keyword, or a torch.nn.Module attribute); choose another")
    return None


@v_args(meta=True)
class _ToAst(Transformer):
    """Lark tree → `cnndsl.ast` nodes, each with the span of its text."""

    def __init__(self, fragment: Fragment):
        super().__init__()
        self.fragment = fragment

    def _span(self, meta):
        return self.fragment.span(meta.start_pos, meta.end_pos)

    def _token_span(self, token):
        return self.fragment.span(token.start_pos, token.end_pos)

    def _value(self, item):
        """A number, a parameter name, or an expression, as an ast value."""
        if isinstance(item, lark.Token):
            span = self._token_span(item)
            if item.type == "INT":
                return ast.Num(int(item), span)
            if item.type == "FLOAT":
                return ast.Num(float(item), span)
            return ast.Ref(str(item), span)
        return item

    def start(self, meta, children):
        *defs, net = children
        program = ast.Program(net=net)
        for block in defs:
            if block.name in program.blocks:
                raise CnnDslError(f"block '{block.name}' is defined twice", block.span)
            program.blocks[block.name] = block
        return name_choices(program)

    def net(self, meta, children):
        return children[0]

    def blockdef(self, meta, children):
        name, params, _ = self.blockhead(meta, children[:1])
        return ast.BlockDef(name, params, children[1], self._span(meta))

    def blockhead(self, meta, children):
        unit = children[0]
        args = unit.args or ()
        if unit.size or unit.dash or unit.slash or unit.dims or unit.label:
            raise CnnDslError(f"a block is defined as 'name = ...' or 'name(a, b) = ...'; "
                              f"'{unit.span.text()}' is not a block name", unit.span)
        params = []
        for arg in args:
            if arg.name is not None or not isinstance(arg.value, ast.Ref):
                raise CnnDslError("a block parameter must be a plain name", arg.span)
            if arg.value.name in params:
                raise CnnDslError(f"parameter '{arg.value.name}' is listed twice", arg.span)
            params.append(arg.value.name)
        return unit.name, tuple(params), unit.span

    def chain(self, meta, children):
        return ast.Chain(tuple(children), self._span(meta))

    def group(self, meta, children):
        return children[0]

    def repeat(self, meta, children):
        """`x*2`, `x*M as i`, `x?`: the postfixes apply left to right, `x*2?` is `(x*2)?`."""
        node, *postfixes = children
        times = [i for i, (what, *_) in enumerate(postfixes) if what == "times"]
        # `layer1: basic(64)*2`: the label names the whole repetition, not each copy.
        label = node.label if isinstance(node, ast.Unit) and times else None
        if label is not None:
            node = ast.Unit(**{**node.__dict__, "label": None})
        for i, (what, end, *rest) in enumerate(postfixes):
            span = self.fragment.span(meta.start_pos, end)
            if what == "times":
                count, index = rest
                node = ast.Repeat(node, count, span, label if i == times[-1] else None, index)
            elif isinstance(node, ast.Optional):
                raise CnnDslError(f"'{node.span.text()}' is optional already: one '?' is enough",
                                  self.fragment.span(end - 1, end))
            else:
                node = ast.Optional(node, choice_base(node) + "?", span)
        return node

    def times(self, meta, children):
        count, index = children
        return "times", meta.end_pos, self._value(count), str(index) if index is not None else None

    def optional(self, meta, children):
        return "optional", children[0].end_pos

    def branch(self, meta, children):
        op, *chains = children
        join = join_words()[str(op).upper()]
        problem = join.arity_problem(len(chains))  # RES takes one chain
        if problem:
            raise CnnDslError(problem, self._span(meta))
        return ast.Branch(join.name, tuple(chains), self._span(meta))

    def labeled(self, meta, children):
        name, unit = children
        problem = label_problem(str(name))
        if problem:
            raise CnnDslError(problem, self._span(meta))
        return ast.Unit(**{**unit.__dict__, "label": str(name), "span": self._span(meta)})

    def unit(self, meta, children):
        name, size, dash, slash, dims, args = children
        v = self._value
        return ast.Unit(str(name), size, v(dash) if dash is not None else None,
                        v(slash) if slash is not None else None, dims, args, self._span(meta))

    def dims(self, meta, children):
        return tuple(int(d) for d in str(children[0]).lower().split("x"))

    def args(self, meta, children):
        return tuple(arg for arg in children if arg is not None)

    def named_arg(self, meta, children):
        return ast.Arg(str(children[0]), self._value(children[1]), self._span(meta))

    def positional_arg(self, meta, children):
        return ast.Arg(None, self._value(children[0]), self._span(meta))

    def negative(self, meta, children):
        number = self._value(children[0])
        return ast.Num(-number.value, self._span(meta))

    def brace(self, meta, children):
        return self._value(children[0])

    def _binop(op):
        def build(self, meta, children):
            left, right = (self._value(c) for c in children)
            return ast.BinOp(op, left, right, self._span(meta))
        return build

    add, sub, mul, floordiv, pow = (_binop("+"), _binop("-"), _binop("*"), _binop("//"),
                                    _binop("**"))

    def neg(self, meta, children):
        return ast.Neg(self._value(children[0]), self._span(meta))
