// Package docs holds the guides (*.md) and the snippets they show (snippets/). It has
// no code; its tests run the snippets against a real agent and check that every block
// a guide marks as quoted is the text of the file it names.
package docs
