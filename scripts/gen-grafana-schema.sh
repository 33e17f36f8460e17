#!/usr/bin/env bash
# Regenerate tests/fixtures/grafana/dashboard.schema.json from Grafana's own dashboard types (npm
# @grafana/schema). Run by hand when moving to a newer Grafana; the tests only read the committed file.
set -euo pipefail
version=${1:-13.2.3}
out="$(cd "$(dirname "$0")/.." && pwd)/tests/fixtures/grafana/dashboard.schema.json"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm init -y >/dev/null
npm install --silent "@grafana/schema@$version" ts-json-schema-generator typescript
npx ts-json-schema-generator --no-type-check --type Dashboard \
  --path node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts -o "$out"
echo "wrote $out from @grafana/schema@$version"
