"""Errors a user can act on. Each carries the process exit code the CLI returns for it."""


class AudioloopError(Exception):
    """Base class: the message is one line that names the file or setting and the fix."""

    exit_code = 1


class InputError(AudioloopError):
    """A file given by the user is missing, unreadable or invalid (exit 1)."""

    exit_code = 1


class SettingsError(AudioloopError):
    """A combination of settings that cannot work (exit 2, like any usage error)."""

    exit_code = 2


class RenderError(AudioloopError):
    """Rendering stopped (non-finite latents, out of memory, ...); the work dir is kept (exit 3)."""

    exit_code = 3


class Interrupted(AudioloopError):
    """Ctrl-C: finished windows stay in the work dir, no output is written (exit 130 = 128 + SIGINT)."""

    exit_code = 130
