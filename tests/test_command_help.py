"""What ``ptychonn-ophyd COMMAND --help`` shows a user (no processes)."""

import re

import pytest

from ptychonn_ophyd.cli import COMMANDS, build_parser, plain_text
from ptychonn_ophyd.pool import START_TIMEOUT_S


def help_of(command: str) -> str:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    return subparsers.choices[command].format_help()


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_markup_and_each_default_once(command):
    shown = help_of(command)
    assert "``" not in shown and not re.search(r":\w+:`", shown), shown
    for option in re.split(r"\n  -", shown):
        assert len(re.findall(r"\(default", option)) <= 1, option


def test_every_demo_option_says_what_it_does():
    options = re.split(r"\n  -", help_of("demo").split("options:", 1)[1])[1:]
    assert len(options) == 6 and all(len(o.split()) > 3 for o in options), options


def test_plain_text_keeps_a_role_s_last_name_or_its_text():
    said = plain_text("a :class:`~ptychonn_ophyd.pool.ConsumerPool`, ``x``, :func:`see <a.b>`")
    assert said == "a ConsumerPool, x, see"


def test_pool_waits_for_its_workers_as_long_as_the_device_does_and_refuses_zero(capsys):
    parser = build_parser()
    assert parser.parse_args(["pool", "--model", "m.onnx"]).start_timeout == START_TIMEOUT_S
    assert START_TIMEOUT_S <= 60
    with pytest.raises(SystemExit) as ended:
        parser.parse_args(["pool", "--model", "m.onnx", "--start-timeout", "0"])
    assert ended.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith("argument --start-timeout: 0.0 is not greater than 0")
    )
