"""manage.py commands: a few lines each that call one service. On top: may import every
package."""
