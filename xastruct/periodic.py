"""The periodic table as the project uses it: symbols by Z, period and group.

Why a module of its own: the inverse models need Z, period and group of many rows fast, pymatgen's
first Element() lookup loads its whole periodic table (~0.8 s per process), and the store's
``elements`` table (migration 0005) is filled from here without importing the models.
"""

from __future__ import annotations

#: element symbols by Z (1..118)
SYMBOLS = ("H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br "
           "Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er "
           "Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md "
           "No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og").split()
Z = {sym: z for z, sym in enumerate(SYMBOLS, start=1)}
#: Z of the last element of each period
PERIOD_ENDS = (2, 10, 18, 36, 54, 86, 118)


def period_group(z: int) -> tuple[int, int]:
    """(period, group) of element *z*, lanthanides and actinides in group 3 (pymatgen's convention)."""
    period = next(i for i, end in enumerate(PERIOD_ENDS, start=1) if z <= end)
    pos = z - (PERIOD_ENDS[period - 2] if period > 1 else 0) - 1
    if period == 1:
        return 1, 1 if z == 1 else 18
    if period <= 3:
        return period, pos + 1 if pos < 2 else pos + 11
    if period <= 5:
        return period, pos + 1
    return period, pos + 1 if pos < 2 else 3 if pos <= 16 else pos - 13


def period_label(period: int) -> str:
    """'4 (K-Kr)': a period with its first and last element."""
    first = 1 if period == 1 else PERIOD_ENDS[period - 2] + 1
    return f"{period} ({SYMBOLS[first - 1]}-{SYMBOLS[PERIOD_ENDS[period - 1] - 1]})"


def table_rows() -> list[dict]:
    """One row per element for the store's ``elements`` table."""
    rows = []
    for z, sym in enumerate(SYMBOLS, start=1):
        period, group = period_group(z)
        rows.append({"symbol": sym, "z": z, "period": period, "group_number": group,
                     "period_label": period_label(period)})
    return rows
