# Shell helpers the run scripts share: source "$(dirname "$0")/lib.sh"

# finished RUN: true when RUN/metrics.json holds the "final" entry train.py writes as a run's last act.
finished() { python3 -c "import json, sys; sys.exit('final' not in json.load(open(sys.argv[1])))" "$1/metrics.json" 2>/dev/null; }
