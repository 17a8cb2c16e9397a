"""systemd/masf-edge@.service: the directives the daemon relies on, and `systemd-analyze verify` of it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from edge_support import ANALYZE, INSTALLED_EXEC, analyze_verify, local_unit_copy, unit_values

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "masf-edge@.service"

# Lines of systemd-analyze output about this unit that are expected. None today; an entry needs a reason.
EXPECTED_WARNINGS: tuple[str, ...] = ()


def _values(key: str, section: str = "Service") -> list[str]:
    return unit_values(UNIT, key, section)


def test_required_directives() -> None:
    required = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": f"{INSTALLED_EXEC} run --config /etc/masf-edge/%i.yaml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "RestartSec": "2",
        "WatchdogSec": "30",
        "TimeoutStartSec": "300",
        "TimeoutStopSec": "30",
        "User": "masf-edge",
        "Group": "masf-edge",
        "SupplementaryGroups": "video render",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "NoNewPrivileges": "true",
        "ProtectKernelTunables": "true",
        "ProtectKernelModules": "true",
        "ProtectControlGroups": "true",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "ReadWritePaths": "/var/lib/masf-edge",
        "StateDirectory": "masf-edge",
        "DevicePolicy": "closed",
        "LimitNOFILE": "65536",
    }
    for key, value in required.items():
        assert _values(key) == [value], key
    allowed = set(_values("DeviceAllow"))
    for dev in (
        "char-video4linux rw",
        "char-usb_device rw",
        "/dev/nvidiactl rw",
        "/dev/nvidia0 rw",
        "/dev/nvidia-uvm rw",
    ):
        assert dev in allowed
    assert _values("WantedBy", "Install") == ["multi-user.target"]


def test_every_group_of_lines_is_commented() -> None:
    """Each block of directives in [Service] is preceded by a comment saying what it is for."""
    lines = UNIT.read_text().splitlines()
    start = lines.index("[Service]")
    end = lines.index("[Install]")
    previous = ""
    for line in lines[start + 1 : end]:
        if line and not line.startswith("#") and not previous:
            pytest.fail(f"uncommented group starting at {line!r}")
        previous = line


def _copy(tmp_path: Path) -> Path:
    return local_unit_copy(UNIT, tmp_path)


def _verify(unit: Path) -> tuple[int, list[str]]:
    """:func:`analyze_verify` without the expected warnings."""
    rc, lines = analyze_verify(unit)
    return rc, [ln for ln in lines if not any(w in ln for w in EXPECTED_WARNINGS)]


needs_analyze = pytest.mark.skipif(
    not os.access(ANALYZE, os.X_OK), reason="systemd-analyze is not installed (Debian package: systemd)"
)


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    template = _copy(tmp_path)
    for unit in (template, tmp_path / "masf-edge@line1.service"):  # the template and an instance of it
        rc, warnings = _verify(unit)
        assert rc == 0 and warnings == [], (unit.name, warnings)


@needs_analyze
def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above is not vacuous: a bad value in this unit shows up in the filtered output."""
    template = _copy(tmp_path)
    template.write_text(template.read_text().replace("DeviceAllow=char-drm rw", "DeviceAllow=char-drm rwx"))
    _, warnings = _verify(tmp_path / "masf-edge@line1.service")
    assert any("Invalid device rights" in w for w in warnings), warnings


@needs_analyze
def test_security_exposure_stays_low(tmp_path: Path) -> None:
    _copy(tmp_path)
    proc = subprocess.run(
        [str(ANALYZE), "security", "--offline=true", "--no-pager", str(tmp_path / "masf-edge@line1.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    if proc.returncode != 0 and match is None:
        pytest.skip(f"systemd-analyze security --offline is not supported here: {proc.stderr.strip()[:200]}")
    assert match is not None, proc.stdout[-500:]
    assert float(match.group(1)) <= 4.0  # 3.3 today; 10 is an unconfined service
