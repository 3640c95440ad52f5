// Polls /status.json about once a second and draws one row per camera (see runtime/status_page.py).
"use strict";
const QUIET_S = 5;  // no decision for this long: red
let previous = null;

function cell(row, text, number) {
  const td = document.createElement("td");
  td.textContent = text;
  if (number) td.className = "number";
  row.appendChild(td);
}

function topReasons(reasons) {
  return Object.entries(reasons).sort((a, b) => b[1] - a[1]).slice(0, 3)
    .map(([reason, count]) => `${reason} ${count}`).join(", ") || "-";
}

function draw(status) {
  const body = document.getElementById("cameras");
  const before = previous ? Object.fromEntries(previous.cameras.map((c) => [c.camera, c])) : {};
  const elapsed = previous ? Math.max(status.time - previous.time, 1e-3) : null;
  body.replaceChildren();
  for (const camera of status.cameras) {
    const last = before[camera.camera];
    const decided = last ? camera.decisions - last.decisions : camera.decisions;
    const deferred = last ? camera.deferred - last.deferred : camera.deferred;
    const age = camera.last_decision_ts === null ? null : status.time - camera.last_decision_ts;
    const quiet = age === null || age > QUIET_S;
    const row = document.createElement("tr");
    const lost = camera.guarantee === "alarm" || camera.audit === "violated";
    row.className = quiet || lost || (decided > 0 && deferred > decided / 2) ? "alarm" : "ok";
    row.dataset.camera = camera.camera;
    cell(row, camera.camera);
    cell(row, elapsed && last ? ((camera.received - last.received) / elapsed).toFixed(1) : "-", true);
    cell(row, camera.decisions ? `${(100 * camera.accepted / camera.decisions).toFixed(1)}%` : "-", true);
    cell(row, topReasons(camera.reasons));
    cell(row, camera.p95_latency_ms === null ? "-" : `${camera.p95_latency_ms.toFixed(1)} ms`, true);
    cell(row, age === null ? "never" : `${age.toFixed(1)} s ago`, true);
    cell(row, camera.bundle_id || "-");
    cell(row, [camera.guarantee, camera.audit && `audit ${camera.audit}`].filter(Boolean).join(" · ") || "-");
    body.appendChild(row);
  }
  const health = status.health || {};
  document.getElementById("service").textContent =
    `${health.status || "?"} · model ${health.model_id || "?"} · ${status.cameras.length} camera(s)`;
  document.getElementById("updated").textContent = new Date(status.time * 1000).toLocaleTimeString();
  previous = status;
}

async function poll() {
  try {
    const response = await fetch("/status.json", { cache: "no-store" });
    if (response.ok) draw(await response.json());
  } catch (error) {
    document.getElementById("service").textContent = `no answer from the service (${error})`;
  } finally {
    setTimeout(poll, 1000);
  }
}

poll();
