"""What the Hub accepts as a dataset repo id: `namespace/name`, checked before the id is written into a card, a
folder or a URL.

huggingface_hub's own validator (`huggingface_hub.utils.validate_repo_id`) is the authority: ASCII letters, digits,
`-`, `_`, `.`; no `--` or `..`; no `-`/`.` at either end of a part; at most 96 characters a part; no `.git` at the
end. What it leaves to the server, checked here: the namespace is required (the Hub's create-repo and URL need
`namespace/name`; a bare name would silently land in the token owner's namespace), and `.git` at the end of either
part, in any case (the Hub refuses a name ending in ".git"; 2.4 checks only the whole id, case-sensitively).
"""

from __future__ import annotations

from gen.errors import UserError


def repo_id_problem(repo_id: object) -> str | None:
    """Why `repo_id` is not a Hub dataset repo id (one line), or None when it is one."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        return "expected OWNER/NAME: a namespace and a name separated by one '/'"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        # Its message ends by quoting the id raw (a newline in it would break the one-line error): the caller
        # names the id, so keep only the rule.
        text = str(exc).strip().removesuffix(".").removesuffix(f": '{repo_id}'")
        return " ".join(text.split())
    for part in repo_id.split("/"):
        if part.lower().endswith(".git"):
            return f"{part!r} ends with '.git', which the Hub refuses"
    return None


def check_repo_id(repo_id: object) -> str:
    """`repo_id` itself if the Hub would accept it; else UserError naming it and what is wrong."""
    problem = repo_id_problem(repo_id)
    if problem:
        raise UserError(f"repo id {repo_id!r}: {problem}")
    return repo_id  # type: ignore[return-value]
