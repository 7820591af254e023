"""Errors a user can act on. The CLI prints them as one line and exits non-zero; nothing else is caught."""


class UserError(Exception):
    """Bad input: a missing file, a malformed row, an unknown teacher spec, a missing key, a bad flag.

    The message is one line and names the file, row or flag at fault.
    """


class MissingDependency(UserError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, module: str, extra: str):
        super().__init__(f"this needs the optional dependency '{module}': pip install 'kdforge[{extra}]'")


class InvalidSetting(UserError):
    """A library setting (an engine, Ray, method or training setting) is out of range or unusable. `setting` is the
    field at fault, so that the CLI can name the flag that set it; the message names only the setting."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting
