"""The `GromacsSettings` block: force field, box, ions and every .mdp parameter of a run.

All molecular-dynamics parameters of helixflow's peptide simulations live here, with
validated defaults, so a run is described by one saved block (and its dump goes into the
inputs NetCDF as provenance). `mdp(stage)` renders the .mdp text GROMACS reads for each
stage: "em" (energy minimisation), "ions" (the throw-away .tpr genion needs), "nvt",
"npt" (only when `npt_enabled`) and "md" (production).

Defaults follow the usual amber99sb-ildn + TIP3P recipe (GROMACS 2022): PME
electrostatics, 1.0 nm cut-offs, Verlet lists, LINCS on bonds to hydrogen, V-rescale
thermostat, C-rescale barostat, 2 fs steps, position restraints on the solute during
equilibration.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, field_validator, model_validator

from helixflow.errors import HelixflowError

Stage = Literal["em", "ions", "nvt", "npt", "md"]
STAGES: tuple[str, ...] = ("em", "ions", "nvt", "npt", "md")

# The pre-equilibrated water box `gmx solvate -cs` uses for each water model.
SOLVENT_BOX: dict[str, str] = {
    "tip3p": "spc216.gro",
    "spc": "spc216.gro",
    "spce": "spc216.gro",
    "tip4p": "tip4p.gro",
    "tip4pew": "tip4p.gro",
    "tip5p": "tip5p.gro",
}
DEFAULT_TOP_DIR = Path("/usr/share/gromacs/top")


def gromacs_top_dir(gmx: str = "gmx") -> Path:
    """GROMACS' force-field directory: $GMXDATA/top, else next to the gmx binary."""
    if os.environ.get("GMXDATA"):
        return Path(os.environ["GMXDATA"]) / "top"
    exe = shutil.which(gmx)
    if exe is not None:
        candidate = Path(exe).resolve().parent.parent / "share" / "gromacs" / "top"
        if candidate.is_dir():
            return candidate
    return DEFAULT_TOP_DIR


def _fmt(value: float | int | str) -> str:
    return repr(value) if isinstance(value, float) else str(value)


class GromacsSettings(Block):
    """How helixflow prepares and runs a GROMACS simulation of a peptide in water.

    System: `pdb2gmx -ff force_field -water water -ignh`, `editconf -bt box_type -d
    box_nm`, `solvate`, `genion` (neutralise, plus `ion_concentration` mol/L of salt).
    Then steepest-descent minimisation, NVT (and optionally NPT) equilibration with the
    solute restrained, and unrestrained production MD. Step counts, time steps,
    couplings and cut-offs below become the .mdp files (`mdp(stage)`).

    Example:
        ```python
        from helixflow.blocks.gromacs import GromacsSettings

        GromacsSettings(md_nsteps=50_000, npt_enabled=True, ntomp=4).save("peptide-md")
        settings = GromacsSettings.load("peptide-md")
        settings.check_installed()          # force field and water model present?
        print(settings.mdp("md"))
        ```
    """

    _block_type_name = "helixflow gromacs settings"
    _block_type_slug = "helixflow-gromacs-settings"
    _description = "Force field, box, ions and .mdp parameters of helixflow's GROMACS runs."

    # --- system preparation -----------------------------------------------------------
    gmx: str = Field(default="gmx", description="GROMACS driver binary (gmx, gmx_mpi, ...).")
    force_field: str = Field(
        default="amber99sb-ildn",
        description="pdb2gmx -ff: a <name>.ff directory in GROMACS' share/gromacs/top.",
    )
    water: str = Field(default="tip3p", description="pdb2gmx -water: " + ", ".join(SOLVENT_BOX))
    box_type: Literal["cubic", "dodecahedron", "octahedron", "triclinic"] = Field(
        default="cubic", description="editconf -bt."
    )
    box_nm: float = Field(
        default=1.0, gt=0, le=5.0,
        description="editconf -d: nm between the solute and the box edge.",
    )
    neutralise: bool = Field(default=True, description="genion -neutral.")
    ion_concentration: float = Field(
        default=0.0, ge=0, le=5.0, description="genion -conc: extra salt in mol/L (0 = none)."
    )
    positive_ion: str = Field(default="NA", description="genion -pname.")
    negative_ion: str = Field(default="CL", description="genion -nname.")

    # --- energy minimisation ----------------------------------------------------------
    em_integrator: Literal["steep", "cg", "l-bfgs"] = Field(
        default="steep", description="Minimiser (.mdp integrator)."
    )
    em_tol: float = Field(
        default=1000.0, gt=0, description="emtol: stop when max force < this (kJ/mol/nm)."
    )
    em_step: float = Field(default=0.01, gt=0, description="emstep: initial step size (nm).")
    em_nsteps: int = Field(default=5000, gt=0, description="Maximum minimisation steps.")

    # --- equilibration and production -------------------------------------------------
    dt: float = Field(
        default=0.002, gt=0, le=0.004, description="Time step (ps) of NVT, NPT and MD."
    )
    ref_t: float = Field(default=300.0, gt=0, description="Temperature (K).")
    tcoupl: Literal["V-rescale", "Nose-Hoover", "Berendsen"] = Field(
        default="V-rescale", description="Thermostat."
    )
    tau_t: float = Field(default=0.1, gt=0, description="Thermostat time constant (ps).")
    tc_grps: str = Field(
        default="Protein Non-Protein",
        description="Temperature-coupling groups (space separated); each gets ref_t, tau_t.",
    )
    gen_seed: int = Field(
        default=1, ge=-1, description="Seed of the NVT start velocities (-1 = random)."
    )
    posres: bool = Field(
        default=True, description="Restrain solute heavy atoms (-DPOSRES) in NVT and NPT."
    )
    nvt_nsteps: int = Field(default=50_000, gt=0, description="NVT equilibration steps.")
    npt_enabled: bool = Field(default=False, description="Run NPT equilibration after NVT.")
    npt_nsteps: int = Field(default=50_000, gt=0, description="NPT equilibration steps.")
    pcoupl: Literal["C-rescale", "Parrinello-Rahman", "Berendsen"] = Field(
        default="C-rescale", description="Barostat of NPT (and of MD when md_pcoupl)."
    )
    ref_p: float = Field(default=1.0, gt=0, description="Pressure (bar).")
    tau_p: float = Field(default=2.0, gt=0, description="Barostat time constant (ps).")
    compressibility: float = Field(default=4.5e-5, gt=0, description="Per bar (water).")
    md_pcoupl: bool = Field(
        default=False,
        description="Keep pressure coupling in production (NPT production); default NVT.",
    )
    md_nsteps: int = Field(default=500_000, gt=0, description="Production steps.")
    nstxout_compressed: int = Field(
        default=5000, gt=0, description="Production: steps between .xtc frames."
    )
    nstxout: int = Field(
        default=0, ge=0, description="Production: steps between full-precision .trr frames."
    )
    nstenergy: int = Field(default=5000, gt=0, description="Steps between .edr energy frames.")
    nstlog: int = Field(default=5000, gt=0, description="Steps between md.log energy prints.")

    # --- interactions -----------------------------------------------------------------
    coulombtype: Literal["PME", "Reaction-Field", "Cut-off"] = Field(default="PME")
    rcoulomb: float = Field(default=1.0, gt=0, le=3.0, description="nm.")
    rvdw: float = Field(default=1.0, gt=0, le=3.0, description="nm.")
    fourierspacing: float = Field(default=0.16, gt=0, description="PME grid spacing (nm).")
    constraints: Literal["none", "h-bonds", "all-bonds"] = Field(default="h-bonds")
    disp_corr: Literal["no", "EnerPres", "Ener"] = Field(default="EnerPres")

    # --- execution --------------------------------------------------------------------
    ntomp: int = Field(
        default=2, gt=0, le=1024,
        description="mdrun -ntomp: OpenMP threads; match the job's CPUs (Slurm cpus-per-task). "
        "More threads than free cores makes mdrun several times slower, not faster.",
    )
    maxwarn: int = Field(default=0, ge=0, description="grompp -maxwarn (0: warnings fail).")
    extra_mdp: dict[str, str] = Field(
        default_factory=dict,
        description="Extra or overriding .mdp lines for every stage (expert use).",
    )

    @field_validator("force_field", "water", "positive_ion", "negative_ion", "gmx")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        """Names go into argv and paths: no separators, spaces or leading dashes."""
        if not value or value.startswith("-") or any(c in value for c in "/\\ \t\n"):
            raise ValueError(f"{value!r} is not a plain name")
        return value

    @field_validator("water")
    @classmethod
    def _known_water(cls, value: str) -> str:
        if value not in SOLVENT_BOX:
            raise ValueError(f"water model {value!r} unknown; choose one of {list(SOLVENT_BOX)}")
        return value

    @field_validator("extra_mdp")
    @classmethod
    def _mdp_lines(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not key or any(c in f"{key}{val}" for c in "\n\r=;"):
                raise ValueError(f"extra_mdp entry {key!r} = {val!r} is not a one-line value")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GromacsSettings:
        """Cross-field checks GROMACS would otherwise reject late, after minutes of work."""
        if self.coulombtype == "PME" and abs(self.rcoulomb - self.rvdw) > 1e-9:
            raise ValueError("with PME and the Verlet scheme rcoulomb must equal rvdw")
        if self.dt > 0.002 and self.constraints == "none":
            raise ValueError(f"dt={self.dt} ps needs constraints (h-bonds) on")
        for name in ("nstxout_compressed", "nstenergy"):  # else only frame 0 is written
            if getattr(self, name) > self.md_nsteps:
                raise ValueError(f"{name}={getattr(self, name)} exceeds md_nsteps={self.md_nsteps}")
        if not self.tc_grps.split():
            raise ValueError("tc_grps names no group")
        return self

    # ----------------------------------------------------------------------------------

    def check_installed(self, top_dir: str | Path | None = None) -> Path:
        """The force field's directory; a clear error when it or the water model is missing.

        Checked at use time (not at construction), since a block may be saved on a
        machine without GROMACS and run on one with it.
        """
        top = Path(top_dir) if top_dir is not None else gromacs_top_dir(self.gmx)
        ff_dir = top / f"{self.force_field}.ff"
        if not ff_dir.is_dir():
            available = sorted(p.name.removesuffix(".ff") for p in top.glob("*.ff"))
            raise HelixflowError(
                f"force field {self.force_field!r} is not installed in {top}",
                hint=f"available: {', '.join(available) or 'none (is GROMACS installed?)'}",
            )
        if not (ff_dir / f"{self.water}.itp").is_file():
            waters = sorted(p.stem for p in ff_dir.glob("*.itp") if p.stem in SOLVENT_BOX)
            raise HelixflowError(
                f"water model {self.water!r} is not defined by {self.force_field}",
                hint=f"available: {', '.join(waters) or 'none'}",
            )
        return ff_dir

    @property
    def solvent_box(self) -> str:
        """The `solvate -cs` coordinates for the water model."""
        return SOLVENT_BOX[self.water]

    def md_parameters(self) -> dict[str, object]:
        """The settings as a plain dict (for provenance and the inputs NetCDF)."""
        return self.model_dump(mode="json", exclude={"block_type_slug"})

    def mdp(self, stage: str) -> str:
        """The .mdp text of one stage: "em", "ions", "nvt", "npt" or "md"."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
        params: dict[str, str] = {}
        if stage in ("em", "ions"):
            params.update(
                integrator=self.em_integrator,
                emtol=_fmt(self.em_tol),
                emstep=_fmt(self.em_step),
                nsteps=str(self.em_nsteps),
            )
        else:
            nsteps = {"nvt": self.nvt_nsteps, "npt": self.npt_nsteps, "md": self.md_nsteps}
            params.update(integrator="md", dt=_fmt(self.dt), nsteps=str(nsteps[stage]))
            if stage in ("nvt", "npt") and self.posres:
                params["define"] = "-DPOSRES"
            if stage == "md":
                params.update(
                    nstxout_compressed=str(self.nstxout_compressed),
                    compressed_x_grps="System",
                    nstxout=str(self.nstxout),
                    nstvout="0",
                    nstfout="0",
                    nstenergy=str(self.nstenergy),
                    nstlog=str(self.nstlog),
                )
            else:
                params.update(nstxout="0", nstvout="0", nstenergy="500", nstlog="500")
        params.update(
            cutoff_scheme="Verlet",
            nstlist="10",
            pbc="xyz",
            coulombtype=self.coulombtype,
            rcoulomb=_fmt(self.rcoulomb),
            vdwtype="Cut-off",
            vdw_modifier="Potential-shift",
            rvdw=_fmt(self.rvdw),
            DispCorr=self.disp_corr,
        )
        if self.coulombtype == "PME":
            params.update(fourierspacing=_fmt(self.fourierspacing), pme_order="4")
        if stage in ("nvt", "npt", "md"):
            groups = self.tc_grps.split()
            params.update(
                constraints=self.constraints,
                constraint_algorithm="lincs",
                lincs_iter="1",
                lincs_order="4",
                tcoupl=self.tcoupl,
                tc_grps=" ".join(groups),
                tau_t=" ".join([_fmt(self.tau_t)] * len(groups)),
                ref_t=" ".join([_fmt(self.ref_t)] * len(groups)),
            )
            if stage == "npt" or (stage == "md" and self.md_pcoupl):
                params.update(
                    pcoupl=self.pcoupl,
                    pcoupltype="isotropic",
                    tau_p=_fmt(self.tau_p),
                    ref_p=_fmt(self.ref_p),
                    compressibility=_fmt(self.compressibility),
                )
                if stage == "npt" and self.posres:
                    params["refcoord_scaling"] = "com"
            else:
                params["pcoupl"] = "no"
            if stage == "nvt":
                params.update(
                    gen_vel="yes", gen_temp=_fmt(self.ref_t), gen_seed=str(self.gen_seed),
                    continuation="no",
                )
            else:  # continue from the previous stage's velocities and constraints
                params.update(gen_vel="no", continuation="yes")
        else:
            params["constraints"] = "none"
        rendered = {key.replace("_", "-"): value for key, value in params.items()}
        # extra_mdp overrides (GROMACS rejects a parameter given twice).
        rendered.update({k.strip().replace("_", "-"): v.strip() for k, v in self.extra_mdp.items()})
        lines = [f"; helixflow GromacsSettings, stage {stage}"]
        lines += [f"{key:<24} = {value}" for key, value in rendered.items()]
        return "\n".join(lines) + "\n"
