# make deb: the Debian package, built as a Debian builder would, from the
# release tarball this tree distributes (so the tarball must carry
# packaging/debian) rather than from the working tree. The .deb is left in
# the build directory.
EXTRA_DIST += \
	packaging/debian/changelog packaging/debian/control \
	packaging/debian/copyright packaging/debian/futured.install \
	packaging/debian/rules packaging/debian/source/format

DEB_WORKDIR = deb-work

.PHONY: deb
deb: dist
	rm -rf $(DEB_WORKDIR)
	$(MKDIR_P) $(DEB_WORKDIR)
	cp $(DIST_ARCHIVES) $(DEB_WORKDIR)/$(PACKAGE)_$(VERSION).orig.tar.xz
	cd $(DEB_WORKDIR) && tar -xJf $(PACKAGE)_$(VERSION).orig.tar.xz
	cp -R $(DEB_WORKDIR)/$(distdir)/packaging/debian $(DEB_WORKDIR)/$(distdir)/debian
	chmod +x $(DEB_WORKDIR)/$(distdir)/debian/rules
	cd $(DEB_WORKDIR)/$(distdir) && \
		env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL dpkg-buildpackage -us -uc -b
	mv $(DEB_WORKDIR)/*.deb .
	rm -rf $(DEB_WORKDIR)
