"""Data files of the vmctl test guest (see vmctl.testguest); a package only so that they ship."""
