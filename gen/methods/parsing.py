"""Turning teacher text into items: numbered lists, labelled fields, yes/no answers. Tolerant of small models'
formatting (stray prefixes, bullets instead of numbers, trailing chatter) but never inventing content."""

from __future__ import annotations

import re

_ITEM = re.compile(r"^\s*(?:(?:\d{1,3}\s*[.):]|[-*•])(?:\s+|$)|(?:task|question|instruction)\s*\d{1,3}\s*[.):]\s*)(.*)$",
                   re.IGNORECASE)
_NUMBER = re.compile(r"^\s*(\d{1,3})\s*[.):](?:\s+|$)")


def parse_numbered_list(text: str, *, first_number: int | None = None) -> list[str]:
    """Items of a numbered (or bulleted) list; an item's continuation lines are joined to it with a newline.

    With `first_number`, numbers below it are skipped (the prompt showed items 1..8 and the model was asked for 9 on;
    a model that repeats the shown ones does not get them back as new). Text before the first item is ignored.
    """
    items: list[list[str]] = []
    skipping = False
    for line in text.splitlines():
        match = _ITEM.match(line)
        if match:
            number = _NUMBER.match(line)
            skipping = bool(first_number is not None and number and int(number.group(1)) < first_number)
            if not skipping:
                items.append([match.group(1).strip()])
        elif items and not skipping and line.strip():
            items[-1].append(line.strip())
        elif not line.strip() and items and not skipping:
            items[-1].append("")
    out = []
    for parts in items:
        item = "\n".join(parts).strip()
        if item:
            out.append(item)
    return out


def strip_prefix_labels(text: str, labels: tuple[str, ...]) -> str:
    """Remove a leading `Label:` (any of `labels`, case-insensitive, optionally in **bold** or #hashes#) and quotes."""
    text = text.strip()
    changed = True
    while changed and text:
        changed = False
        for label in labels:
            pattern = re.compile(r"^[#*\[\s]*" + re.escape(label) + r"\s*[#*\]]*\s*[:\-]?\s*[#*\]]*\s*", re.IGNORECASE)
            new = pattern.sub("", text, count=1)
            if new != text:
                text, changed = new.strip(), True
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def contains_any(text: str, phrases: tuple[str, ...] | list[str]) -> str | None:
    """The first of `phrases` that occurs in `text` (case-insensitive), else None."""
    lowered = text.lower()
    for phrase in phrases:
        if phrase.lower() in lowered:
            return phrase
    return None


def parse_yes_no(text: str) -> bool | None:
    """A yes/no answer from the first word that is yes or no; None if the text says neither."""
    for word in re.findall(r"[a-z]+", text.lower())[:8]:
        if word in ("yes", "true"):
            return True
        if word in ("no", "false"):
            return False
    return None


def word_count(text: str) -> int:
    return len(text.split())


_LIST_START = re.compile(r"^\s*(\d{1,3}\s*[.):]|[-*•])(\s|$)")


def parse_list_reply(text: str, first_number: int = 1) -> list[str]:
    """Items of a reply to a prompt that ended with `"{first_number}."`: a model that simply continues the list
    starts without the number, so it is put back before parsing."""
    text = text.strip()
    if text and not _LIST_START.match(text):
        text = f"{first_number}. {text}"
    return parse_numbered_list(text, first_number=first_number)


_SPEAKER_LINE = re.compile(r"\n\s*(\[[A-Za-z ]{1,20}\]|(?:AI assistant|assistant|user|ai|you|human)\s*:)",
                           re.IGNORECASE)


def cut_at_speaker_label(text: str) -> str:
    """A reply cut before the first line that opens another speaker's turn ("[Assistant] ...", "User: ..."): a base
    model writing one turn often runs on into the next."""
    match = _SPEAKER_LINE.search(text)
    return (text[:match.start()] if match else text).strip()
