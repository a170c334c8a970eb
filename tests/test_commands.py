"""`nvp`'s subcommands from other packages: found through the entry-point group ``nvp.commands``."""

import secrets

import pytest

import nvp_rt.cli
from dist_info import write_distribution
from nvp_rt.command import COMMANDS_GROUP, registered_commands


def test_the_export_side_registers_encode_and_bench():
    import nvp_export.cli

    commands = registered_commands()
    assert commands["encode"] is nvp_export.cli.add_encode and commands["bench"] is nvp_export.cli.add_bench
    parser = nvp_rt.cli.build_parser()
    args = parser.parse_args(["encode", "in.mp4", "-o", "out.nvp", "--size", "64x48", "--frames", "2:10:2"])
    assert args.run is nvp_export.cli.cmd_encode and args.size == (64, 48) and args.frames == (2, 10, 2)


def test_a_package_adds_a_subcommand(tmp_path, monkeypatch, capsys):
    name = f"nvp_plugin_{secrets.token_hex(4)}"  # a fresh module name: nothing cached from another run
    word = secrets.token_hex(6)
    (tmp_path / f"{name}.py").write_text(
        "def add(sub):\n"
        "    p = sub.add_parser('hello', help='says hello')\n"
        "    p.add_argument('--to', required=True)\n"
        "    p.set_defaults(run=lambda args: print('hello', args.to))\n"
    )
    write_distribution(tmp_path, name, "1.0", {COMMANDS_GROUP: {"hello": f"{name}:add"}})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "hello" in registered_commands()
    assert nvp_rt.cli.main(["hello", "--to", word]) == 0
    assert capsys.readouterr().out == f"hello {word}\n"


def test_a_plugin_that_fails_to_import_costs_only_its_own_command(tmp_path, monkeypatch, capsys):
    broken, missing, hello = (f"nvp_plugin_{secrets.token_hex(4)}" for _ in range(3))  # nothing cached
    dist = f"{broken}_dist"  # a dist-info's name up to its first "-" is the distribution's
    (tmp_path / f"{broken}.py").write_text(f"import {missing}  # an undeclared dependency\ndef add(sub): ...\n")
    write_distribution(tmp_path, dist, "2.3", {COMMANDS_GROUP: {"broken": f"{broken}:add", "gone": f"{broken}_x:add"}})
    (tmp_path / f"{hello}.py").write_text("def add(sub):\n    sub.add_parser('hello').set_defaults(run=print)\n")
    write_distribution(tmp_path, hello, "1.0", {COMMANDS_GROUP: {"hello": f"{hello}:add"}})
    monkeypatch.syspath_prepend(str(tmp_path))
    why = {
        "broken": f"plugin '{broken}:add', from {dist} 2.3 failed to import: "
        f"ModuleNotFoundError: No module named '{missing}'",
        "gone": f"plugin '{broken}_x:add', from {dist} 2.3 failed to import: "
        f"ModuleNotFoundError: No module named '{broken}_x'",
    }
    warning = {command: f"nvp: warning: nvp {command} is unavailable: {reason}" for command, reason in why.items()}

    assert nvp_rt.cli.main(["hello"]) == 0  # another plugin's command runs, after one line per broken one
    out = capsys.readouterr()
    assert out.out.startswith("Namespace(") and sorted(out.err.splitlines()) == sorted(warning.values())
    assert nvp_rt.cli.main(["info", str(tmp_path / "missing.nvp")]) == 1  # so do the runtime's own commands
    *warned, error = capsys.readouterr().err.splitlines()
    assert sorted(warned) == sorted(warning.values()) and error.startswith("nvp info: error: ") and "missing" in error
    for argv in (["broken"], ["broken", "--help"], ["gone", "x", "-y"]):
        assert nvp_rt.cli.main(argv) == 1  # the broken command itself fails with its reason, in one line
        (other,) = set(why) - {argv[0]}
        err = capsys.readouterr().err.splitlines()
        assert err == [warning[other], f"nvp {argv[0]}: error: nvp {argv[0]} is unavailable: {why[argv[0]]}"]
    with pytest.raises(SystemExit) as exited:
        nvp_rt.cli.main(["--help"])
    assert exited.value.code == 0 and missing in capsys.readouterr().out  # listed, with its reason


def test_without_the_export_side_its_commands_fail_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(nvp_rt.cli, "registered_commands", dict)
    for argv in (["encode", "clip.mp4", "-o", "clip.nvp"], ["bench", "--help"]):
        assert nvp_rt.cli.main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"nvp {argv[0]}: error: nvp {argv[0]} needs the export side: pip install 'nvp[export]'"]
    assert nvp_rt.cli.main(["info", str(tmp_path / "missing.nvp")]) == 1  # the runtime's own commands still run
    assert "missing.nvp" in capsys.readouterr().err
