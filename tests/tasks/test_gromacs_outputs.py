"""Tests for tasks/gromacs_outputs.py: .xvg files (a real run to NetCDF: test_gromacs.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helixflow.tasks.gromacs_outputs import read_xvg


def test_read_xvg(tmp_path: Path) -> None:
    path = tmp_path / "energy.xvg"
    path.write_text(
        '# comment\n@    title "GROMACS Energies"\n@ s0 legend "Potential"\n'
        '@ s1 legend "Kinetic En."\n    0.0  -10.5  3.0\n    0.2  -11.0  3.5\n'
    )
    t, cols = read_xvg(path)
    np.testing.assert_array_equal(t, [0.0, 0.2])
    assert list(cols) == ["Potential", "Kinetic En."]
    np.testing.assert_array_equal(cols["Kinetic En."], [3.0, 3.5])
