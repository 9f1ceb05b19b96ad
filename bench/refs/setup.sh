#!/usr/bin/env bash
# Creates bench/.venv-refs, the reference engines' own virtual environment (never the project's),
# with experta and durable_rules at versions checked to run the benchmark on Python 3.11.
# Idempotent: a second run only confirms what is there. PYTHON picks the interpreter (python3).
#
# experta 1.9.4 pins frozendict==1.2, which fails to import on Python 3.10+ (collections.Mapping
# is gone), so experta is installed without its pins and given frozendict 2.4.6 (the API it uses
# is unchanged) and its own schema 0.6.7. durable_rules 2.0.28 is an sdist with a C extension:
# it needs a C compiler and the Python headers.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/../.venv-refs"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "durable_rules==2.0.28" "frozendict==2.4.6" "schema==0.6.7"
"${pip[@]}" --no-deps "experta==1.9.4"
"$venv/bin/python" -c "import experta, durable.lang" 
echo "reference engines ready: $(cd "$venv" && pwd)/bin/python"
