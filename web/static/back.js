// "← go back" links (a[data-back]): the previous page when there is one, else their href.
for (const link of document.querySelectorAll('a[data-back]')) {
  link.addEventListener('click', event => {
    if (history.length > 1) {
      event.preventDefault();
      history.back();
    }
  });
}
