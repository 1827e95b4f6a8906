"""The one exception type users see as a one-line message (the CLI prints it without a traceback)."""


class KvlError(Exception):
    """A problem with the user's input or environment, phrased for the user: name the file and the problem."""


def read_user_file(path, label: str | None = None, what: str = "a file") -> bytes:
    """The bytes of a file a user named, or a KvlError saying in one line why it cannot be read."""
    from pathlib import Path

    label = label or str(path)
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise KvlError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise KvlError(f"{label}: is a directory, not {what}") from None
    except OSError as e:
        raise KvlError(f"{label}: cannot read file ({e.strerror or e})") from None


def read_json_object(path, label: str | None = None) -> dict:
    """A JSON file holding one object (config.json and friends), or a one-line KvlError."""
    import json

    label = label or str(path)
    raw = read_user_file(path, label, "a JSON file")
    try:
        d = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KvlError(f"{label}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise KvlError(f"{label}: expected a JSON object")
    return d
