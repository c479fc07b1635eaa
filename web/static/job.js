// Live job page: polls the JSON API until the job reaches a terminal state.
(function () {
  const root = document.getElementById('job');
  const TERMINAL = ['succeeded', 'failed', 'blocked', 'canceled'];
  const $ = (id) => document.getElementById(id);

  function render(job) {
    const status = $('status');
    status.textContent = job.status + (job.stage ? ' · ' + job.stage : '');
    status.className = 'pill status-' + job.status;
    for (const [name, stage] of Object.entries(job.stages)) {
      const li = document.querySelector(`.stage[data-stage="${name}"]`);
      li.className = 'stage state-' + stage.state;
      const parts = [];
      if (stage.seconds !== null) parts.push(stage.seconds.toFixed(2) + ' s');
      if (stage.cached) parts.push('cached');
      li.querySelector('.detail').textContent = parts.join(' · ');
    }
    const progress = $('progress');
    if (job.progress && job.progress.steps) {
      progress.hidden = false;
      progress.querySelector('.bar').style.width = (100 * job.progress.step / job.progress.steps) + '%';
      progress.querySelector('.label').textContent = `step ${job.progress.step}/${job.progress.steps}`;
    } else {
      progress.hidden = true;
    }
    if (job.error) { $('error').hidden = false; $('error').textContent = job.error.message; }
    if (job.audit) {
      $('audit').hidden = false;
      $('audit').innerHTML = 'Audit: <strong></strong>' + (job.audit.reasons || []).map(r => ' · ' + r).join('');
      $('audit').querySelector('strong').textContent = job.audit.verdict;
    }
    if (job.links.result) {
      $('result').src = job.links.result;
      $('download').href = job.links.result + '?download=1';
      $('result-figure').hidden = false;
    }
    $('waiting').hidden = TERMINAL.includes(job.status);
    const cancel = $('cancel-form');
    if (cancel) cancel.hidden = TERMINAL.includes(job.status);
  }

  async function poll() {
    try {
      const response = await fetch(root.dataset.api, { headers: { Accept: 'application/json' } });
      if (response.ok) {
        const job = await response.json();
        render(job);
        if (TERMINAL.includes(job.status)) return;
      }
    } catch (e) { /* server restarting: keep trying */ }
    setTimeout(poll, 700);
  }
  if (!TERMINAL.includes(root.dataset.status)) poll();
})();
