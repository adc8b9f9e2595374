// tests/vite.rs rewrites this line while the page is open and waits for the hot update.
export const message = 'hello from the sandbox'
