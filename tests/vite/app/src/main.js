// Renders the message and takes hot updates of it in place: the page is never reloaded.
import { message } from './message.js'

const app = document.querySelector('#app')
const render = (text) => {
  app.textContent = `Rendered by main.js: ${text}`
}
render(message)

if (import.meta.hot) {
  import.meta.hot.accept('./message.js', (next) => {
    if (next) render(next.message)
  })
}
