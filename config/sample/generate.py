#!/usr/bin/env python3
"""Writes the sample HR feeds hr-initial.csv and hr-update.csv next to this script.

The output is deterministic (fixed seed, no clock), so regenerating gives identical files.
After writing, the files are read back and every count is checked against them.
"""

import csv
import datetime as dt
import random
import sys
from pathlib import Path

SEED = 20261125
HERE = Path(__file__).resolve().parent
COLUMNS = [
    "employee_id", "full_name", "email", "department", "job_title", "employment_type",
    "site", "status", "hire_date", "termination_date", "contract_end", "manager_id",
]
SITES = ["berlin", "london", "new-york"]
DEPARTMENTS = ["engineering", "sales", "facilities", "finance", "operations"]
# Titles other than manager that fit each department, so the data reads plausibly.
TITLES = {
    "engineering": ["engineer", "engineer", "engineer", "technician", "analyst"],
    "sales": ["sales rep", "sales rep", "sales rep", "analyst"],
    "facilities": ["technician", "technician", "analyst"],
    "finance": ["analyst", "analyst", "sales rep"],
    "operations": ["technician", "analyst", "engineer"],
}
FIRST = [
    "Ada", "Alan", "Amara", "Ben", "Carla", "Chen", "Daniel", "Dana", "Elena", "Emil", "Fatima",
    "Felix", "Grace", "Hannah", "Hugo", "Ines", "Ivan", "Jana", "Jonas", "Julia", "Kai", "Laura",
    "Leon", "Lina", "Marco", "Maya", "Nadia", "Noah", "Olga", "Omar", "Paula", "Priya", "Ravi",
    "Rosa", "Sam", "Sofia", "Tariq", "Tom", "Vera", "Yusuf", "Zoe",
]
LAST = [
    "Adams", "Bauer", "Becker", "Brown", "Campbell", "Costa", "Davies", "Evans", "Fischer",
    "Garcia", "Hartmann", "Hughes", "Jones", "Kaur", "Keller", "Khan", "Klein", "Lopez",
    "Meyer", "Miller", "Moreno", "Nguyen", "Novak", "Okafor", "Patel", "Peters", "Rossi",
    "Schmidt", "Schulz", "Silva", "Smith", "Taylor", "Thomas", "Wagner", "Walker", "Weber",
    "Williams", "Wilson", "Wright", "Young",
]

INITIAL_COUNT = 1000
FIRST_ID = 10001
ON_LEAVE = 10
TERMINATED = 20
REHIRE = "E10050"
NEAR_EXPIRY = 8
NEAR_EXPIRY_DATE = "2026-12-31"
JOINERS = 25
MOVERS = 30
LEAVERS = 25
FUTURE_TERMINATIONS = 3
RETURNS = 2
DISAPPEAR = 6
JOIN_DATE = "2026-11-20"
LEAVE_DATE = "2026-11-24"
FUTURE_DATE = "2030-06-30"
REHIRE_DATE = "2026-11-23"
BAD_DATE = "2026-13-45"
BAD_STATUS = "Retired"


def random_date(rng, start, end):
    days = (end - start).days
    return start + dt.timedelta(days=rng.randint(0, days))


def person(rng, number, department, title, manager_id):
    first, last = rng.choice(FIRST), rng.choice(LAST)
    contractor = title != "manager" and rng.random() < 0.16
    return {
        "employee_id": f"E{number}",
        "full_name": f"{first} {last}",
        "email": f"{first}.{last}.{number}@example.com".lower(),
        "department": department,
        "job_title": title,
        "employment_type": "contractor" if contractor else "employee",
        "site": rng.choice(SITES),
        "status": "Active",
        "hire_date": random_date(rng, dt.date(2012, 1, 1), dt.date(2025, 12, 31)).isoformat(),
        "termination_date": "",
        "contract_end": (
            random_date(rng, dt.date(2027, 1, 31), dt.date(2029, 12, 31)).isoformat()
            if contractor else ""
        ),
        "manager_id": manager_id,
    }


def initial_feed(rng):
    numbers = list(range(FIRST_ID, FIRST_ID + INITIAL_COUNT))
    # Managers come first in each department's list so everyone else can point at one.
    candidates = [n for n in numbers if f"E{n}" != REHIRE]
    manager_numbers = sorted(rng.sample(candidates, 60))
    by_department = {d: [] for d in DEPARTMENTS}
    people = {}
    for i, n in enumerate(manager_numbers):
        department = DEPARTMENTS[i % len(DEPARTMENTS)]
        # The first manager of a department heads it; the others report to the head.
        head = by_department[department][0] if by_department[department] else ""
        by_department[department].append(f"E{n}")
        people[n] = person(rng, n, department, "manager", head)
    for n in numbers:
        if n in people:
            continue
        department = rng.choice(DEPARTMENTS)
        title = rng.choice(TITLES[department])
        people[n] = person(rng, n, department, title, rng.choice(by_department[department]))
    rows = [people[n] for n in numbers]

    managers = {r["employee_id"] for r in rows if r["job_title"] == "manager"}
    plain = [r for r in rows if r["employee_id"] not in managers and r["employee_id"] != REHIRE]
    rehire = next(r for r in rows if r["employee_id"] == REHIRE)
    chosen = rng.sample(plain, TERMINATED - 1 + ON_LEAVE)
    for r in chosen[:TERMINATED - 1] + [rehire]:
        r["status"] = "Terminated"
        r["hire_date"] = random_date(rng, dt.date(2012, 1, 1), dt.date(2024, 6, 30)).isoformat()
        r["termination_date"] = random_date(
            rng, dt.date(2025, 1, 1), dt.date(2025, 12, 31)
        ).isoformat()
    for r in chosen[TERMINATED - 1:]:
        r["status"] = "On Leave"
    active_contractors = [
        r for r in rows if r["employment_type"] == "contractor" and r["status"] == "Active"
    ]
    for r in rng.sample(active_contractors, NEAR_EXPIRY):
        r["contract_end"] = NEAR_EXPIRY_DATE
    return rows, sorted(managers)


def update_feed(rng, initial, managers):
    rows = {r["employee_id"]: dict(r) for r in initial}
    manager_set = set(managers)
    # People whose next day is ordinary; every change below draws from them without overlap.
    steady = [
        eid for eid, r in rows.items()
        if eid not in manager_set and r["status"] == "Active" and r["contract_end"] != NEAR_EXPIRY_DATE
    ]
    picks = rng.sample(steady, DISAPPEAR + MOVERS + LEAVERS + FUTURE_TERMINATIONS + 2)
    disappear, picks = picks[:DISAPPEAR], picks[DISAPPEAR:]
    movers, picks = picks[:MOVERS], picks[MOVERS:]
    leavers, picks = picks[:LEAVERS], picks[LEAVERS:]
    future, picks = picks[:FUTURE_TERMINATIONS], picks[FUTURE_TERMINATIONS:]
    bad_date, bad_status = picks
    returning = rng.sample(sorted(e for e, r in rows.items() if r["status"] == "On Leave"), RETURNS)

    move_kinds = {"department": 0, "site": 0, "job_title": 0}
    for eid in movers:
        r = rows[eid]
        kinds = rng.choice([
            ["department"], ["site"], ["job_title"], ["department", "job_title"],
            ["site", "job_title"], ["department", "site"],
        ])
        for kind in kinds:
            move_kinds[kind] += 1
        if "department" in kinds:
            r["department"] = rng.choice([d for d in DEPARTMENTS if d != r["department"]])
            r["manager_id"] = rng.choice(
                [m for m in managers if rows[m]["department"] == r["department"]]
            )
        if "site" in kinds:
            r["site"] = rng.choice([s for s in SITES if s != r["site"]])
        if "job_title" in kinds:
            titles = sorted(set(TITLES[r["department"]]) | {"manager"})
            r["job_title"] = rng.choice([t for t in titles if t != r["job_title"]])
    for eid in leavers:
        rows[eid]["status"] = "Terminated"
        rows[eid]["termination_date"] = LEAVE_DATE
    for eid in future:
        rows[eid]["termination_date"] = FUTURE_DATE
    for eid in returning:
        rows[eid]["status"] = "Active"
    rows[REHIRE].update(status="Active", hire_date=REHIRE_DATE, termination_date="")
    rows[bad_date]["termination_date"] = BAD_DATE
    rows[bad_status]["status"] = BAD_STATUS
    for eid in disappear:
        del rows[eid]

    joiners = []
    for i in range(JOINERS):
        number = FIRST_ID + INITIAL_COUNT + i
        department = rng.choice(DEPARTMENTS)
        r = person(
            rng, number, department, rng.choice(TITLES[department]),
            rng.choice([m for m in managers if rows[m]["department"] == department]),
        )
        r["hire_date"] = JOIN_DATE
        joiners.append(r)

    plan = {
        "disappear": sorted(disappear), "movers": sorted(movers), "leavers": sorted(leavers),
        "future": sorted(future), "returning": sorted(returning), "bad_date": bad_date,
        "bad_status": bad_status, "move_kinds": move_kinds,
        "joiners": [r["employee_id"] for r in joiners],
    }
    return sorted(rows.values(), key=lambda r: r["employee_id"]) + joiners, plan


def write(path, rows):
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read(path):
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            sys.exit(f"{path.name}: unexpected header {reader.fieldnames}")
        return {r["employee_id"]: r for r in reader}


def check(cond, what):
    if not cond:
        sys.exit(f"check failed: {what}")


def verify(plan):
    """Re-reads both files and derives every count from them, independently of the generator."""
    old, new = read(HERE / "hr-initial.csv"), read(HERE / "hr-update.csv")
    statuses = [r["status"] for r in old.values()]
    contractors = [r for r in old.values() if r["employment_type"] == "contractor"]
    counts = {
        "initial people": len(old),
        "initial Active": statuses.count("Active"),
        "initial On Leave": statuses.count("On Leave"),
        "initial Terminated": statuses.count("Terminated"),
        "initial contractors": len(contractors),
        "initial contract_end 2026-12-31": sum(
            r["contract_end"] == NEAR_EXPIRY_DATE for r in contractors
        ),
        "initial managers": sum(r["job_title"] == "manager" for r in old.values()),
        "update rows": len(new),
    }
    gone = sorted(set(old) - set(new))
    joined = sorted(set(new) - set(old))
    both = sorted(set(old) & set(new))
    changed = lambda e, cols: any(old[e][c] != new[e][c] for c in cols)
    counts["disappeared"] = len(gone)
    counts["joiners"] = len(joined)
    counts["movers"] = sum(changed(e, ["department", "site", "job_title"]) for e in both)
    counts["leavers"] = sum(
        old[e]["status"] != "Terminated" and new[e]["status"] == "Terminated" for e in both
    )
    counts["future-dated terminations"] = sum(
        new[e]["status"] == "Active" and new[e]["termination_date"] == FUTURE_DATE for e in both
    )
    counts["returns from leave"] = sum(
        old[e]["status"] == "On Leave" and new[e]["status"] == "Active" for e in both
    )
    counts["rehires"] = sum(
        old[e]["status"] == "Terminated" and new[e]["status"] == "Active" for e in both
    )
    counts["bad dates"] = sum(new[e]["termination_date"] == BAD_DATE for e in both)
    counts["bad statuses"] = sum(new[e]["status"] == BAD_STATUS for e in both)
    counts["rows changed in total"] = sum(old[e] != new[e] for e in both)

    check(counts["initial people"] == INITIAL_COUNT, "initial size")
    check(
        (counts["initial Active"], counts["initial On Leave"], counts["initial Terminated"])
        == (INITIAL_COUNT - ON_LEAVE - TERMINATED, ON_LEAVE, TERMINATED),
        "initial statuses",
    )
    check(counts["initial contract_end 2026-12-31"] == NEAR_EXPIRY, "near-expiry contracts")
    check(gone == plan["disappear"], "disappeared people")
    check(joined == plan["joiners"], "joiners")
    check(all(new[e]["hire_date"] == JOIN_DATE and new[e]["status"] == "Active" for e in joined),
          "joiners' hire date and status")
    check(counts["movers"] == MOVERS, "movers")
    check(counts["leavers"] == LEAVERS, "leavers")
    check(all(new[e]["termination_date"] == LEAVE_DATE for e in plan["leavers"]), "leave dates")
    check(counts["future-dated terminations"] == FUTURE_TERMINATIONS, "future terminations")
    check(counts["returns from leave"] == RETURNS, "returns from leave")
    check(counts["rehires"] == 1, "rehire count")
    check(
        (new[REHIRE]["status"], new[REHIRE]["hire_date"], new[REHIRE]["termination_date"])
        == ("Active", REHIRE_DATE, ""),
        "rehire row",
    )
    check(old[REHIRE]["status"] == "Terminated"
          and old[REHIRE]["termination_date"].startswith("2025-"), "rehire was terminated in 2025")
    check(counts["bad dates"] == 1 and counts["bad statuses"] == 1, "bad rows")
    check(counts["rows changed in total"]
          == MOVERS + LEAVERS + FUTURE_TERMINATIONS + RETURNS + 1 + 2, "no unplanned changes")
    for e in (plan["bad_date"], plan["bad_status"]):
        diff = [c for c in COLUMNS if old[e][c] != new[e][c]]
        check(len(diff) == 1, f"bad row {e} differs only in the bad cell")
    for feed in (old, new):
        emails = [r["email"] for r in feed.values()]
        check(len(set(emails)) == len(emails), "unique emails")
        check(all(e.isascii() and e == e.lower() for e in emails), "ASCII lowercase emails")
        for r in feed.values():
            m = r["manager_id"]
            check(m == "" or feed[m]["job_title"] == "manager", f"{r['employee_id']} manager")
    return counts


def line_of(path, employee_id):
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.startswith(employee_id + ","):
                return number
    return None


def main():
    rng = random.Random(SEED)
    initial, managers = initial_feed(rng)
    update, plan = update_feed(rng, initial, managers)
    write(HERE / "hr-initial.csv", initial)
    write(HERE / "hr-update.csv", update)
    counts = verify(plan)
    for name, value in counts.items():
        print(f"{name:34} {value}")
    kinds = plan["move_kinds"]
    print(f"{'mover changes (dept/site/title)':34} "
          f"{kinds['department']}/{kinds['site']}/{kinds['job_title']}")
    upd = HERE / "hr-update.csv"
    print(f"{'bad termination_date':34} {plan['bad_date']} "
          f"(hr-update.csv:{line_of(upd, plan['bad_date'])})")
    print(f"{'bad status':34} {plan['bad_status']} "
          f"(hr-update.csv:{line_of(upd, plan['bad_status'])})")
    print(f"{'disappeared':34} {' '.join(plan['disappear'])}")
    print(f"{'future-dated terminations':34} {' '.join(plan['future'])}")
    print(f"{'returns from leave':34} {' '.join(plan['returning'])}")


if __name__ == "__main__":
    main()
