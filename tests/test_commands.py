"""`nvp`'s subcommands from other packages: found through the entry-point group ``nvp.commands``."""

import secrets

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


def test_without_the_export_side_its_commands_fail_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(nvp_rt.cli, "registered_commands", dict)
    for argv in (["encode", "clip.mp4", "-o", "clip.nvp"], ["bench", "--help"]):
        assert nvp_rt.cli.main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"nvp {argv[0]}: error: nvp {argv[0]} needs the export side: pip install 'nvp[export]'"]
    assert nvp_rt.cli.main(["info", str(tmp_path / "missing.nvp")]) == 1  # the runtime's own commands still run
    assert "missing.nvp" in capsys.readouterr().err
