"""A generator of realistic Emirax projects, for the compile benchmark and the property tests.

    generate(lines, *, seed=0, files=10) -> {"rules/part_01.emx": text, ...}
    write_project(root, lines, seed=0, files=10) -> root     emirax.toml + rules/*.emx

The text looks like real tenant rules (the media pipeline of SPEC section 2 and its cousins:
documents, orders, training jobs, ...): workflows with several fact types and defaults, functions
with options, rules with salience, joins, `not`/`exists`/`collect`/`when`, actions that call one
function, a list or a map of them, or start a child workflow, reactions with closures,
interpolated strings, `?.`, `?:`, `*.`, ranges, `if`/`else`, `for`, `def`, `modify`, `retract`,
`complete`, `fail` and error sections. Every file names the package `bench.gen`; workflow names
are unique across the project. The output parses and checks without errors, is the same for the
same arguments, and holds exactly `lines` lines (the sum of every file's line count).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "bench.gen"
VERSION = "1.0.0"
MIN_LINES = 45  # the smallest project: one workflow with its declarations and a few rules
_MIN_FILE = 120  # files get at least this many lines (fewer files when `lines` is small)
_MIN_WORKFLOW = 40
_IND = "    "


@dataclass(frozen=True)
class Domain:
    """The words one family of workflows uses: fact, field and function names."""

    title: str  # workflow name stem
    req: str  # the request fact
    src: str  # its String field naming the input
    spec: str  # its String field naming how to process
    count: str  # its int field: how many items
    item: str  # one piece of work
    done: str  # one piece, processed
    final: str  # the joined result
    split: str  # function: input -> list of item uris
    work: str  # function: one item -> one processed uri
    join: str  # function: processed uris -> final uri
    specs: tuple[str, ...]  # example values of `spec`


DOMAINS = (
    Domain("VideoEncode", "Request", "source", "recipe", "chunks", "Chunk", "Encoded", "Assembled",
           "split", "encode", "assemble", ("h264", "vp9", "av1")),
    Domain("DocumentOcr", "Upload", "path", "language", "pages", "Page", "Recognized", "Indexed",
           "renderPages", "ocr", "buildIndex", ("en", "fr", "de")),
    Domain("OrderFulfil", "Order", "cart", "warehouse", "lines", "Line", "Reserved", "Shipped",
           "expandCart", "reserve", "ship", ("north", "south", "central")),
    Domain("ModelTrain", "Job", "dataset", "model", "shards", "Shard", "Trained", "Merged",
           "shard", "train", "merge", ("small", "base", "large")),
    Domain("AudioMaster", "Track", "master", "codec", "segments", "Segment", "Transcoded", "Muxed",
           "cut", "transcode", "mux", ("aac", "opus", "flac")),
    Domain("LakeLoad", "Batch", "bucket", "schema", "partitions", "Partition", "Loaded",
           "Published", "listPartitions", "load", "publish", ("v1", "v2", "v3")),
)

_CHANNELS = ("slack", "email", "pager", "webhook", "sms")
_OWNERS = ("ops", "media", "data", "platform", "billing")
_COMMENTS = (
    "keeps the agenda deterministic: salience first, then source order",
    "a join: one activation per matching pair",
    "runs once: the Audit fact it inserts blocks it afterwards",
    "collect gives the facts in fact-id order",
    "the reaction receives every result once all invocations are done",
    "retries are handled by the runner; this only records what happened",
    "urgent requests skip the approval step",
    "TODO: move the thresholds into the request once clients send them",
    "errors here are not fatal: the workflow goes on without the summary",
    "the owner is notified on every channel they subscribed to",
    "ranges are exclusive with ..< and inclusive with ..",
    "see the runbook before changing the order of these rules",
)


@dataclass
class _Child:
    """A workflow generated earlier: a target for `start` in later ones."""

    name: str
    domain: Domain


@dataclass
class _Ctx:
    """What the rules of one workflow may use."""

    rng: random.Random
    name: str
    d: Domain
    children: list[_Child]
    has_retry: bool
    has_approval: bool
    used: dict[str, int] = field(default_factory=dict)

    def rule_name(self, base: str) -> str:
        """A rule name unique in the workflow (a repeated template gets a number)."""
        n = self.used.get(base, 0) + 1
        self.used[base] = n
        return base if n == 1 else f"{base} ({n})"

    def pick(self, *options: str) -> str:
        return self.rng.choice(options)


# ── declarations ────────────────────────────────────────────────────────────────────────────


def _fact_lines(c: _Ctx) -> list[str]:
    d, rng = c.d, c.rng
    extra = rng.sample(
        ["String region = 'eu-west-1'", "double budget = 10.5", "long deadline = 0",
         "List tags = []", "String owner2 = ''"],
        k=rng.randint(0, 2),
    )
    req_fields = [f"String {d.src}", f"String {d.spec}", f"int {d.count} = {rng.choice((4, 8, 16, 31, 64))}",
                  "boolean urgent = false", f"String owner = '{rng.choice(_OWNERS)}'",
                  "Map meta = [:]", *extra]
    out: list[str] = []
    if rng.random() < 0.4:
        out.append(f"{_IND}// The request a client starts {c.name} with.")
    if rng.random() < 0.5:
        out.append(f"{_IND}fact {d.req}(")
        out += [f"{_IND * 2}{f}," for f in req_fields]
        out.append(f"{_IND})")
    else:
        out.append(f"{_IND}fact {d.req}({', '.join(req_fields)})")
    out += [
        f"{_IND}fact {d.item}(int index, String uri, long size = 0, double weight = 1.0)",
        f"{_IND}fact {d.done}(int index, String uri, int attempts = 1)"
        + rng.choice(("", f"   // one {d.item.lower()}, processed")),
        f"{_IND}fact {d.final}(String uri, List parts = [])",
        f"{_IND}fact Failed(String reason, String stage = 'unknown', int code = 0)",
        f"{_IND}fact Progress(int done = 0, int total, String status = 'running')",
        f"{_IND}fact Audit(String event, Map data = [:])",
        f"{_IND}fact Note(String text, List tags = [])",
    ]
    if c.has_retry:
        out.append(f"{_IND}fact Retry(int index, int count = 0)")
    if c.has_approval:
        out.append(f"{_IND}fact Approval(String by, boolean granted = true)")
    return out


def _options(rng: random.Random, choices: list[str]) -> str:
    picked = [o for o in choices if rng.random() < 0.55]
    return f" with [{', '.join(picked)}]" if picked else ""


def _function_lines(c: _Ctx) -> list[str]:
    d, rng = c.d, c.rng
    t = lambda: rng.choice(("'30s'", "'5m'", "'10m'", "'1h'", "'2h'", "'500ms'"))  # noqa: E731
    return [
        f"{_IND}function List {d.split}(String {d.src}, int {d.count})"
        + _options(rng, [f"timeout: {t()}", f"retries: {rng.randint(0, 3)}", "backoff: '1m'"]),
        f"{_IND}function String {d.work}(String uri, String {d.spec})"
        + f" with [timeout: '2h', retries: {rng.randint(1, 5)}, priority: {rng.randint(1, 9)}]",
        f"{_IND}function String {d.join}(List parts)"
        + _options(rng, ["queue: 'heavy'", "backoff: 'exponential'", f"timeout: {t()}"]),
        f"{_IND}function Map probe(String {d.src})"
        + _options(rng, ["timeout: '30s'", "cache: '10m'", "priority: 2"]),
        f"{_IND}function boolean notify(String channel, String message)"
        + _options(rng, ["retries: 5", "backoff: '30s'", "queue: 'notify'"]),
        f"{_IND}function Map summarize(List uris)" + _options(rng, ["cache: true", "timeout: '5m'"]),
        f"{_IND}function def archive(String uri, Map meta)",
    ]


# ── rule templates: each returns the rule's lines (indented one level) ──────────────────────────


def _rule(header: str, body: list[str]) -> list[str]:
    return [f"{_IND}{header} {{", *(f"{_IND * 2}{line}" if line else "" for line in body), f"{_IND}}}"]


def _salience(c: _Ctx, low: int, high: int) -> str:
    return f" with [salience: {c.rng.randint(low, high)}]" if c.rng.random() < 0.5 else ""


def r_split(c: _Ctx) -> list[str]:
    d, rng = c.d, c.rng
    b = c.pick("req", "r", "request")
    log = rng.random() < 0.5
    body = [
        "match {",
        f"    {b}: {d.req}()",
        f"    not {d.item}()",
        "    not Failed()" if rng.random() < 0.6 else f"    when {b}.{d.count} > 0",
        "}",
        "action {",
        f"    {d.split}({b}.{d.src}, {b}.{d.count})",
        "}",
        "reaction { parts ->",
    ]
    if rng.random() < 0.5:
        body += [
            f"    if (parts.size() != {b}.{d.count}) {{",
            f"        insert Failed(stage: 'split', reason: \"{d.split} gave ${{parts.size()}} parts, expected ${{{b}.{d.count}}}\")",
            "        return",
            "    }",
        ]
    if log:
        body.append(f"    log \"split ${{{b}.{d.src}}} into ${{parts.size()}} {d.item.lower()}s\"")
    body += [
        f"    parts.eachWithIndex {{ uri, i -> insert {d.item}(index: i, uri: uri) }}",
        "    insert Progress(total: parts.size())",
        "}",
        "error { err ->",
        f"    insert Failed(reason: \"{d.split}: ${{err.message}} (after ${{err.attempts}} attempts)\", stage: 'split')",
        "}",
    ]
    return _rule(f"rule '{c.rule_name(f'split {d.src}')}'", body)


def r_work(c: _Ctx) -> list[str]:
    d, rng = c.d, c.rng
    it, rq = c.pick("c", "item", "piece"), c.pick("r", "req")
    cons = rng.choice(("", "size >= 0", "weight > 0.0", "uri != null"))
    body = [
        "match {",
        f"    {it}: {d.item}({cons})",
        f"    {rq}: {d.req}()",
        f"    not {d.done}(index == {it}.index)",
    ]
    if rng.random() < 0.3:
        body.append(f"    when !{rq}.urgent || {it}.weight >= 1.0")
    body.append("}")
    if rng.random() < 0.5:
        body.append(f"action {{ {d.work}({it}.uri, {rq}.{d.spec}) }}")
    else:
        body += [
            "action {",
            f"    def {c.pick('chosen', 'spec', 'profile')} = {rq}.{d.spec} ?: '{rng.choice(d.specs)}'",
            f"    {d.work}({it}.uri, {rq}.{d.spec})",
            "}",
        ]
    body.append(f"reaction {{ uri -> insert {d.done}(index: {it}.index, uri: uri) }}")
    if rng.random() < 0.6:
        body += [
            "error { err ->",
            "    if (err.attempts > 2) {",
            f"        insert Failed(stage: 'work', reason: \"{d.item.lower()} ${{{it}.index}}: ${{err.message}}\", code: err.attempts)",
            "    } else {",
            f"        log \"{d.work} of ${{{it}.uri}} failed in ${{err.function}}: ${{err.type}}\"",
            "    }",
            "}",
        ]
    return _rule(f"rule '{c.rule_name(f'{d.work} {d.item.lower()}')}'{_salience(c, 0, 5)}", body)


def r_join(c: _Ctx) -> list[str]:
    d, rng = c.d, c.rng
    rq, outs = c.pick("r", "req"), c.pick("outs", "finished", "results")
    key = rng.choice(("{ it.index }", "{ a, b -> a.index < b.index ? -1 : 1 }"))
    body = [
        "match {",
        f"    {rq}: {d.req}()",
        f"    {outs}: collect {d.done}()",
        f"    when {outs}.size() == {rq}.{d.count}",
        f"    not {d.final}()",
        "}",
        f"action {{ {d.join}({outs}.sort {key}*.uri) }}",
        "reaction { uri ->",
        f"    insert {d.final}(uri: uri, parts: {outs}*.uri)",
    ]
    if rng.random() < 0.5:
        body.append(f"    complete(uri: uri, parts: {outs}.size(), owner: {rq}.owner)")
    body.append("}")
    if rng.random() < 0.5:
        body += ["error {", f"    fail \"{d.join} failed: ${{it.message}}\"", "}"]
    return _rule(f"rule '{c.rule_name(d.join)}' with [salience: {rng.randint(5, 20)}]", body)


def r_probe(c: _Ctx) -> list[str]:
    d, rng = c.d, c.rng
    rq = c.pick("r", "req")
    return _rule(f"rule '{c.rule_name(f'probe {d.src}')}'", [
        "match {",
        f"    {rq}: {d.req}(meta.isEmpty())",
        "    not Audit(event == 'probed')",
        "}",
        "action {",
        f"    def channel = {rq}.urgent ? 'pager' : '{rng.choice(_CHANNELS)}'",
        f"    [info: probe({rq}.{d.src}), told: notify(channel, \"probing ${{{rq}.{d.src}}} for $channel\")]",
        "}",
        "reaction { res ->",
        "    insert Audit(event: 'probed', data: res.info ?: [:])",
        "    if (!res.told) {",
        f"        log \"could not tell ${{{rq}.owner}} about ${{{rq}.{d.src}}}\"",
        "    }",
        "}",
    ])


def r_announce(c: _Ctx) -> list[str]:
    d, rng = c.d, c.rng
    f, rq = c.pick("f", "fin", "result"), c.pick("r", "req")
    chans = rng.sample(_CHANNELS, 3)
    if rng.random() < 0.5:
        call = f"    [{', '.join(f'notify({ch!r}, msg)' for ch in chans[:2])}]"
    else:
        call = (f"    [{', '.join(repr(ch) for ch in chans)}].findAll {{ it != 'pager' || {rq}.urgent }}"
                ".collect { ch -> notify(ch, msg) }")
    return _rule(f"rule '{c.rule_name(f'announce {d.final.lower()}')}'", [
        "match {",
        f"    {f}: {d.final}()",
        f"    {rq}: {d.req}()",
        "    not Audit(event == 'announced')",
        "}",
        "action {",
        f"    def msg = \"${{{rq}.{d.src}}} is ready at ${{{f}.uri}} (${{{f}.parts.size()}} parts)\"",
        call,
        "}",
        "reaction { sent ->",
        "    def ok = sent.count { it == true }",
        "    insert Audit(event: 'announced', data: [sent: ok, total: sent.size()])",
        "}",
    ])


def r_progress(c: _Ctx) -> list[str]:
    d = c.d
    p, fin = c.pick("p", "prog"), c.pick("finished", "outs", "processed")
    return _rule(f"rule '{c.rule_name('track progress')}'", [
        "match {",
        f"    {p}: Progress(status == 'running')",
        f"    {fin}: collect {d.done}()",
        f"    when {fin}.size() != {p}.done",
        "}",
        "action {",
        "    def slow = 0",
        "    def fast = 0",
        f"    for (x in {fin}) {{",
        "        if (x.attempts > 1) {",
        "            slow += 1",
        "        } else {",
        "            fast += 1",
        "        }",
        "    }",
        f"    modify {p} {{",
        f"        done = {fin}.size()",
        f"        status = {fin}.size() >= {p}.total ? 'finishing' : 'running'",
        "    }",
        f"    log \"progress ${{{p}.done}}/${{{p}.total}}: $fast first time, $slow retried\"",
        "}",
    ])


def r_plan(c: _Ctx) -> list[str]:
    d, rng = c.d, c.rng
    rq = c.pick("r", "req")
    incl = rng.choice(("(1..3)", "(1..<4)"))
    return _rule(f"rule '{c.rule_name(f'plan {d.item.lower()}s')}'", [
        "match {",
        f"    {rq}: {d.req}({d.count} > 0)",
        "    not Note(text == 'planned')",
        "}",
        "action {",
        f"    def weights = (0..<{rq}.{d.count}).collect {{ i -> i % 3 == 0 ? 2.0 : 1.0 }}",
        "    def total = weights.sum()",
        f"    def slots = {incl}.collect {{ \"slot-$it\" }}.join(',')",
        f"    insert Note(text: 'planned', tags: [slots, \"total=${{total}}\", {rq}.{d.spec}])",
        "}",
    ])


def r_retry(c: _Ctx) -> list[str]:
    d = c.d
    it = c.pick("c", "item")
    return _rule(f"rule '{c.rule_name(f'retry failed {d.item.lower()}')}' with [salience: -5]", [
        "match {",
        "    bad: Failed(stage == 'work')",
        f"    {it}: {d.item}()",
        f"    rt: Retry(index == {it}.index, count < 3)",
        "}",
        "action {",
        "    retract bad",
        "    modify rt { count = rt.count + 1 }",
        f"    {d.work}({it}.uri, 'fallback')",
        "}",
        f"reaction {{ uri -> insert {d.done}(index: {it}.index, uri: uri, attempts: rt.count + 1) }}",
        "error { err ->",
        f"    fail \"giving up on ${{{it}.index}} after ${{err.attempts}} attempts: ${{err.message}}\"",
        "}",
    ])


def r_seed_retry(c: _Ctx) -> list[str]:
    d = c.d
    return _rule(f"rule '{c.rule_name('remember retries')}'", [
        "match {",
        f"    it2: {d.item}()",
        "    not Retry(index == it2.index)",
        "}",
        "action { insert Retry(index: it2.index) }",
    ])


def r_start(c: _Ctx) -> list[str]:
    d, rng = c.d, c.rng
    child = rng.choice(c.children)
    cd = child.domain
    rq = c.pick("r", "req")
    return _rule(f"rule '{c.rule_name(f'delegate to {child.name}')}'", [
        "match {",
        f"    {rq}: {d.req}(urgent)",
        f"    exists {d.final}()",
        "    not Audit(event == 'delegated')",
        "}",
        "action {",
        f"    start {PACKAGE}.{child.name}({cd.req}({cd.src}: {rq}.{d.src}, {cd.spec}: '{rng.choice(cd.specs)}', {cd.count}: {rng.randint(2, 8)}))",
        "}",
        "reaction { out ->",
        "    insert Audit(event: 'delegated', data: out)",
        "    log \"child finished with ${out?.uri ?: 'no uri'}\"",
        "}",
        "error { err ->",
        "    insert Failed(reason: \"child: ${err.message}\", stage: 'delegate')",
        "}",
    ])


def r_cleanup(c: _Ctx) -> list[str]:
    d = c.d
    return _rule(f"rule '{c.rule_name('clean notes')}'", [
        "match {",
        f"    exists {d.final}()",
        "    stale: collect Note(tags.contains('tmp') || text.startsWith('draft'))",
        "    when !stale.isEmpty()",
        "}",
        "action {",
        "    stale.each { retract it }",
        "    log \"removed ${stale.size()} notes\"",
        "}",
    ])


def r_summarize(c: _Ctx) -> list[str]:
    d, rng = c.d, c.rng
    f, al = c.pick("f", "fin"), c.pick("all", "outs", "pieces")
    body = [
        "match {",
        f"    {f}: {d.final}()",
        f"    {al}: collect {d.done}()",
        "    not Audit(event == 'summary')",
        "}",
        "action {",
        f"    summarize({al}*.uri)",
        "}",
        "reaction { s ->",
        f"    def largest = {al}.max {{ it.attempts }}",
        f"    def byTry = {al}.groupBy {{ it.attempts }}",
        "    def region = s?.region ?: 'unknown'",
        "    insert Audit(event: 'summary', data: [region: region, retried: byTry.keySet().size(),",
        "        worst: largest?.index ?: -1])",
    ]
    if rng.random() < 0.5:
        body.append(f"    complete(uri: {f}.uri, summary: s, region: region)")
    body += ["}", "error { log \"summary failed: ${it.message}\" }"]
    return _rule(f"rule '{c.rule_name(f'summarize {d.done.lower()}')}'", body)


def r_approval(c: _Ctx) -> list[str]:
    d, rng = c.d, c.rng
    rq = c.pick("r", "req")
    owners = ", ".join(repr(o) for o in rng.sample(_OWNERS, 2))
    return _rule(f"rule '{c.rule_name('await approval')}' with [salience: {rng.randint(15, 30)}, enabled: true]", [
        "match {",
        f"    {rq}: {d.req}()",
        f"    exists {d.final}()",
        "    not Approval()",
        f"    when {rq}.owner in [{owners}] && !{rq}.urgent",
        "}",
        "action {",
        f"    notify('approvals', \"approve ${{{rq}.{d.src}}} owned by ${{{rq}.owner?.toUpperCase()}}\")",
        "}",
        "reaction { ok ->",
        "    if (ok) {",
        "        log 'approval requested'",
        "    } else {",
        "        insert Failed(reason: 'approval request failed', stage: 'approval')",
        "    }",
        "}",
    ])


def r_archive(c: _Ctx) -> list[str]:
    d = c.d
    return _rule(f"rule '{c.rule_name('archive when approved')}'", [
        "match {",
        "    a: Approval(granted)",
        f"    f: {d.final}()",
        "}",
        "action {",
        "    archive(f.uri, [by: a.by, parts: f.parts.size(), 'approved at': 'now'])",
        "}",
    ])


def r_report_failure(c: _Ctx) -> list[str]:
    d = c.d
    rq = c.pick("r", "req")
    return _rule(f"rule '{c.rule_name('report failure')}' with [salience: 100]", [
        "match {",
        "    bad: Failed()",
        f"    {rq}: {d.req}()",
        "}",
        "action {",
        f"    notify({rq}.urgent ? 'pager' : 'slack', \"${{bad.stage}} failed: ${{bad.reason}} (code ${{bad.code}})\")",
        "}",
        "reaction { fail \"stopped at ${bad.stage}: ${bad.reason}\" }",
    ])


def r_score(c: _Ctx) -> list[str]:
    d, rng = c.d, c.rng
    rq = c.pick("r", "req")
    return _rule(f"rule '{c.rule_name(f'score {d.item.lower()}s')}'", [
        "match {",
        f"    {rq}: {d.req}()",
        f"    items: collect {d.item}(weight > 0.0)",
        "    when items.size() > 1 && items.every { it.uri != null }",
        "    not Note(text.startsWith('score'))",
        "}",
        "action {",
        "    def total = items.sum { it.weight }",
        "    def heavy = items",
        "        .findAll { it.weight > total / items.size() }",
        "        .sort { it.index }",
        f"    def label = {rq}.{d.src}.toLowerCase().replace(' ', '-').padLeft({rng.randint(8, 16)}, '_')",
        "    def key = items.inject(0) { acc, x -> acc + x.index }",
        f"    if (heavy.any {{ it.size > {rng.choice((1000, 65536, 1000000))} }}) {{",
        "        insert Note(text: \"score heavy ${label}\", tags: heavy*.uri)",
        "    } else if (key % 2 == 0) {",
        "        insert Note(text: \"score even ${label}\")",
        "    } else {",
        "        insert Note(text: \"score odd $label $key\", tags: ['tmp'])",
        "    }",
        "}",
    ])


def r_reweigh(c: _Ctx) -> list[str]:
    d = c.d
    it = c.pick("c", "piece")
    return _rule(f"rule '{c.rule_name('reweigh urgent')}'", [
        "match {",
        f"    {d.req}(urgent)",
        f"    {it}: {d.item}(weight < 2.0)",
        "}",
        f"action {{ modify {it} {{ weight = {it}.weight * 2; size = {it}.size + 1 }} }}",
    ])


def r_echo(c: _Ctx) -> list[str]:
    """The smallest rule (4 lines): fills the last lines of a workflow."""
    n = c.pick("n", "note")
    return _rule(f"rule '{c.rule_name('echo note')}'", [
        f"match {{ {n}: Note(!tags.isEmpty()) }}",
        f"action {{ log \"note: ${{{n}.text}} [${{{n}.tags.join(', ')}}]\" }}",
    ])


def r_tag_urgent(c: _Ctx) -> list[str]:
    d, rng = c.d, c.rng
    rq = c.pick("r", "req")
    return _rule(f"rule '{c.rule_name('tag urgent requests')}'", [
        "match {",
        f"    {rq}: {d.req}(urgent, !meta.containsKey('tagged'))",
        "}",
        "action {",
        f"    def tags = [{rq}.owner, {rq}.{d.spec}].findAll {{ it }}*.toUpperCase().unique()",
        f"    def extra = [tagged: true, by: 'rules', level: {rng.randint(1, 3)}, 'it\\'s': \"tab\\tend\"]",
        f"    modify {rq} {{ meta = {rq}.meta + extra }}",
        "    insert Note(text: \"urgent ${tags.join('/')}\", tags: tags + ['tmp'])",
        "}",
    ])


_CORE: tuple[Callable[[_Ctx], list[str]], ...] = (r_split, r_work, r_join)
_EXTRA: tuple[Callable[[_Ctx], list[str]], ...] = (
    r_probe, r_announce, r_progress, r_plan, r_cleanup, r_summarize, r_report_failure, r_score,
    r_reweigh, r_tag_urgent, r_work, r_echo,
)


def _templates(c: _Ctx) -> list[Callable[[_Ctx], list[str]]]:
    out = list(_EXTRA)
    if c.has_retry:
        out += [r_retry, r_seed_retry]
    if c.has_approval:
        out += [r_approval, r_archive]
    if c.children:
        out.append(r_start)
    return out


# ── workflows, files, projects ──────────────────────────────────────────────────────────────


def _workflow(rng: random.Random, number: int, children: list[_Child], target: int) -> tuple[list[str], _Child]:
    """One workflow of exactly `target` lines (target >= _MIN_WORKFLOW)."""
    d = DOMAINS[rng.randrange(len(DOMAINS))]
    name = f"{d.title}{number:04d}"
    c = _Ctx(rng, name, d, children, has_retry=rng.random() < 0.5, has_approval=rng.random() < 0.5)
    head = [f"workflow {name} {{", *_fact_lines(c), "", *_function_lines(c)]
    budget = target - len(head) - 1  # the closing brace
    rules: list[list[str]] = []
    used = 0
    for make in _CORE:
        lines = make(c)
        if used + len(lines) + 1 > budget:
            break
        rules.append(lines)
        used += len(lines) + 1  # a blank line before each rule
    extra = _templates(c)
    deck: list[Callable[[_Ctx], list[str]]] = []
    while True:
        if not deck:  # each template once before any comes back: fewer repeats
            deck = rng.sample(extra, k=len(extra))
        for make in [*deck[:4], r_echo]:
            names = dict(c.used)
            lines = make(c)
            if used + len(lines) + 1 <= budget:
                if make in deck:
                    deck.remove(make)
                break
            c.used = names  # not taken: its name stays free
        else:
            break
        rules.append(lines)
        used += len(lines) + 1
    body = _pad(rng, rules, budget - used)
    return [*head, *body, "}"], _Child(name, d)


def _pad(rng: random.Random, rules: list[list[str]], spare: int) -> list[str]:
    """The rules, each after a blank line, with `spare` comment lines spread before them."""
    notes = [0] * max(1, len(rules))
    for i in range(spare):
        notes[i % len(notes)] += 1
    out: list[str] = []
    for i, lines in enumerate(rules):
        out.append("")
        out += [f"{_IND}// {rng.choice(_COMMENTS)}" for _ in range(notes[i])]
        out += lines
    if not rules:
        out += [f"{_IND}// {rng.choice(_COMMENTS)}" for _ in range(spare)]
    return out


def _split(rng: random.Random, total: int) -> list[int]:
    """Workflow sizes adding up to `total` (each at least _MIN_WORKFLOW)."""
    sizes: list[int] = []
    left = total
    while left > 0:
        size = rng.randint(90, 260)
        if left - size < _MIN_WORKFLOW + 20:
            size = left if left <= 400 else left // 2
        sizes.append(size)
        left -= size
    return sizes


def generate(lines: int, *, seed: int = 0, files: int = 10) -> dict[str, str]:
    """A project of `lines` lines in about `files` files: {"rules/part_01.emx": text, ...}."""
    if lines < MIN_LINES:
        raise ValueError(f"a generated project has at least {MIN_LINES} lines, not {lines}")
    if files < 1:
        raise ValueError("files must be at least 1")
    rng = random.Random(f"emirax-bench-{seed}")
    count = max(1, min(files, lines // _MIN_FILE))
    per_file = [lines // count + (1 if i < lines % count else 0) for i in range(count)]
    children: list[_Child] = []
    number = 0
    out: dict[str, str] = {}
    width = max(2, len(str(count)))
    for index, budget in enumerate(per_file, start=1):
        text = [f"// Generated by bench/gen.py (seed {seed}): part {index} of {count}.", f"package {PACKAGE}"]
        for size in _split(rng, budget - len(text)):
            number += 1
            text.append("")
            wf, child = _workflow(rng, number, children, size - 1)
            text += wf
            children.append(child)
        out[f"rules/part_{index:0{width}d}.emx"] = "\n".join(text) + "\n"
    return out


def count_lines(project: dict[str, str]) -> int:
    """The project's line count: the newlines of every file (each ends with one)."""
    return sum(text.count("\n") for text in project.values())


def write_project(root: Path, lines: int, seed: int = 0, files: int = 10) -> Path:
    """Write `emirax.toml` and `rules/*.emx` under `root` (created if needed); return `root`."""
    root = Path(root)
    (root / "rules").mkdir(parents=True, exist_ok=True)
    (root / "emirax.toml").write_text(
        f'[bundle]\npackage = "{PACKAGE}"\nversion = "{VERSION}"\n', encoding="utf-8"
    )
    for rel, text in generate(lines, seed=seed, files=files).items():
        (root / rel).write_text(text, encoding="utf-8")
    return root


if __name__ == "__main__":  # print a project's first file, or write one: gen.py LINES [DIR]
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    if len(sys.argv) > 2:
        print(write_project(Path(sys.argv[2]), n))
    else:
        project = generate(n)
        print(next(iter(project.values())), end="")
