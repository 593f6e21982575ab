"""Hybrid P-tuning templates: pseudo tokens anywhere, among discrete anchors.

A template is text with three kinds of slots:

  `[P:n]`    n pseudo tokens (`[P]` is one); numbered 0, 1, ... left to
             right across the whole template.
  `{field}`  the example's value of `field` (a name of word characters).
  `[MASK]`   the answer slot; renders as a configurable string or token id,
             or as nothing (a decoder-only model predicts what follows).

Everything else is anchor text, e.g.
`[P:3] {sentence} [P:3] It was [MASK]` (3 + 3 pseudo tokens, one field,
anchor "It was").

`render` turns an example dict into token ids with a `Tokenizer`
(`prompt_jax.backbones.base`): pseudo token i becomes id `-1 - i`, which
`Seams.pseudo_token_fn` replaces by row i of the P-tuning prompt (the
backbone embeds negative ids as id 0 first, and they count as real tokens
in the default `ids != 0` masks). Each anchor and field value is stripped
of surrounding whitespace and tokenized on its own (as the original
P-tuning code tokenizes the template's parts separately); a tokenizer that
marks word starts (SentencePiece) gives each part its own word boundary.
"""

import dataclasses
import re
from typing import Any, Mapping, Sequence

from prompt_jax.backbones import base as backbones_base

_SLOT = re.compile(r"\[P(?::(\d+))?\]|\{(\w+)\}|\[MASK\]")
_SUSPECT = re.compile(r"[{}]|\[P\b|\[MASK")  # A slot that did not parse.

TEXT, PSEUDO, FIELD, MASK = "text", "pseudo", "field", "mask"


@dataclasses.dataclass(frozen=True)
class Template:
  """A parsed template.

  Attributes:
    text: the template as written.
    segments: (kind, value) in order: (TEXT, str), (PSEUDO, count),
      (FIELD, name), (MASK, None).
  """
  text: str
  segments: tuple[tuple[str, Any], ...]

  @property
  def num_pseudo(self) -> int:
    """P: the pseudo tokens of the whole template."""
    return sum(v for k, v in self.segments if k == PSEUDO)

  @property
  def fields(self) -> tuple[str, ...]:
    """The field names, in order of appearance (repeats kept once)."""
    return tuple(dict.fromkeys(v for k, v in self.segments if k == FIELD))


def _text(template: str, piece: str) -> tuple[str, str]:
  if _SUSPECT.search(piece):
    raise ValueError(f"template {template!r}: cannot parse {piece.strip()!r}"
                     " (slots are [P:n], {field} and [MASK])")
  return (TEXT, piece)


def parse(template: str, fields: Sequence[str] | None = None) -> Template:
  """Parses `template`; with `fields`, every {field} must be one of them.

  Raises:
    ValueError: one line naming the template, for no {field}, a field not
      in `fields`, `[P:0]` or a slot that does not parse.
  """
  if not isinstance(template, str):
    raise ValueError(f"template must be a string, got {template!r}")
  segments, at = [], 0
  for m in _SLOT.finditer(template):
    if m.start() > at:
      segments.append(_text(template, template[at:m.start()]))
    if m.group(0).startswith("[P"):
      count = 1 if m.group(1) is None else int(m.group(1))
      if count < 1:
        raise ValueError(f"template {template!r}: {m.group(0)} has no pseudo "
                         "tokens; use [P:n] with n >= 1")
      segments.append((PSEUDO, count))
    elif m.group(2) is not None:
      segments.append((FIELD, m.group(2)))
    else:
      segments.append((MASK, None))
    at = m.end()
  if at < len(template):
    segments.append(_text(template, template[at:]))
  parsed = Template(template, tuple(segments))
  if not parsed.fields:
    raise ValueError(f"template {template!r} has no {{field}} slot for the "
                     "example's text")
  if fields is not None:
    unknown = [f for f in parsed.fields if f not in fields]
    if unknown:
      raise ValueError(f"template {template!r}: unknown field(s) {unknown}; "
                       f"expected among {sorted(fields)}")
  return parsed


def _mask_ids(mask: str | int | None,
              tokenizer: backbones_base.Tokenizer) -> list[int]:
  if mask is None:
    return []
  if isinstance(mask, str):
    return list(tokenizer.encode(mask))
  return [int(mask)]


def render(template: Template | str, example: Mapping[str, Any],
           tokenizer: backbones_base.Tokenizer,
           mask: str | int | None = None, add_eos: bool = False
           ) -> list[int]:
  """Token ids of `example` in the template; pseudo token i is `-1 - i`.

  Args:
    template: a `Template` or its text.
    example: field name -> value (str() of it is tokenized).
    tokenizer: encodes anchors, field values and a string `mask`.
    mask: what `[MASK]` becomes: a string (tokenized), a token id, or None
      (nothing).
    add_eos: append `tokenizer.eos_id`.

  Raises:
    ValueError: one line naming the template and the missing field.
  """
  if isinstance(template, str):
    template = parse(template)
  missing = [f for f in template.fields if f not in example]
  if missing:
    raise ValueError(f"template {template.text!r}: the example has no field "
                     f"{missing}; it has {sorted(example)}")
  ids, pseudo = [], 0
  for kind, value in template.segments:
    if kind == PSEUDO:
      ids.extend(-1 - (pseudo + j) for j in range(value))
      pseudo += value
    elif kind == MASK:
      ids.extend(_mask_ids(mask, tokenizer))
    else:
      text = str(example[value] if kind == FIELD else value).strip()
      if text:
        ids.extend(tokenizer.encode(text))
  if add_eos:
    ids.append(tokenizer.eos_id)
  return ids
