// The new-job form: show the fieldsets of the chosen engine only.
(() => {
  const form = document.getElementById('submit-form');
  if (!form) return;
  function showEngine() {
    const engine = form.querySelector('input[name=engine]:checked').value;
    document.querySelectorAll('.engine-style').forEach(el => el.hidden = engine !== 'style');
    document.querySelectorAll('.engine-diffusion').forEach(el => el.hidden = engine !== 'diffusion');
  }
  form.querySelectorAll('input[name=engine]').forEach(el => el.addEventListener('change', showEngine));
  showEngine();
})();
