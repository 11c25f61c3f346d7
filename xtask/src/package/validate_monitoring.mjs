// node validate_monitoring.mjs MANIFESTS.yaml [ALERTS.yml]
// Validates every ServiceMonitor, PodMonitor and PrometheusRule in MANIFESTS.yaml with the
// prometheus-operator models (validators compiled from its CRD schemas), and, given ALERTS.yml,
// checks that each PrometheusRule's groups are exactly that file's. Prints one line per
// object; exits 1 on the first failure.
import { readFileSync } from "node:fs";
import { isDeepStrictEqual } from "node:util";
import yaml from "js-yaml";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const models = { ServiceMonitor, PodMonitor, PrometheusRule };
const [manifests, alerts] = process.argv.slice(2);
const docs = yaml.loadAll(readFileSync(manifests, "utf8")).filter(Boolean);
const rules = alerts ? yaml.load(readFileSync(alerts, "utf8")).groups : null;
for (const doc of docs) {
  if (doc.apiVersion !== "monitoring.coreos.com/v1") continue;
  const Model = models[doc.kind];
  const name = `${doc.kind}/${doc.metadata?.name}`;
  if (!Model) {
    console.error(`${name}: no model for this kind`);
    process.exit(1);
  }
  try {
    new Model(doc).validate();
  } catch (e) {
    console.error(`${name}: ${e.message}`);
    process.exit(1);
  }
  if (doc.kind === "PrometheusRule" && rules && !isDeepStrictEqual(doc.spec.groups, rules)) {
    console.error(`${name}: its groups are not those of ${alerts}`);
    process.exit(1);
  }
  console.log(`${name}: valid`);
}
