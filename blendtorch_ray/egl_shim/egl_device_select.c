/*
 * blendtorch-ray: make a headless Blender draw (Eevee, Workbench, the viewport renderer) with
 * the GPU its Ray actor was given.
 *
 * Blender's headless GPU context calls eglGetDisplay(EGL_DEFAULT_DISPLAY), and EGL picks its
 * default device on its own: CUDA_VISIBLE_DEVICES does not steer it. This library is loaded
 * as "libEGL.so.1" in place of the system's (the launcher puts its directory first on
 * LD_LIBRARY_PATH; Blender's libepoxy dlopens "libEGL.so.1"). It depends on the real libEGL by
 * absolute path, so every EGL function it does not define resolves to the real one, and it
 * defines only eglGetDisplay / eglGetPlatformDisplay(EXT) / eglGetProcAddress: a request for
 * the default (or surfaceless) display returns the display of the EGL device chosen by
 * BLENDTORCH_EGL_DEVICE instead:
 *
 *   pci:DDDD:BB:DD.F   the device whose DRM node sits on that PCI address (nvidia-smi's
 *                      pci.bus_id; a leading 8-digit domain is accepted),
 *   cuda:N             the device whose EGL_CUDA_DEVICE_NV is N (NVIDIA's EGL_NV_device_cuda),
 *   index:N            the N-th device eglQueryDevicesEXT lists.
 *
 * The choice is written to stderr (Blender's log) once, as one line starting with
 * "blendtorch-egl:": the device index, its DRM node and extensions, or why none matched (then
 * EGL's own default is used, and the GL renderer Blender reports says which device drew).
 */
#define _GNU_SOURCE
#include <EGL/egl.h>
#include <EGL/eglext.h>
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#ifndef EGL_CUDA_DEVICE_NV
#define EGL_CUDA_DEVICE_NV 0x323A
#endif
#ifndef EGL_PLATFORM_SURFACELESS_MESA
#define EGL_PLATFORM_SURFACELESS_MESA 0x31DD
#endif
#ifndef EGL_DRM_RENDER_NODE_FILE_EXT
#define EGL_DRM_RENDER_NODE_FILE_EXT 0x3377
#endif
#ifndef BLENDTORCH_REAL_LIBEGL
#error "compile with -DBLENDTORCH_REAL_LIBEGL=\"/path/to/the/real/libEGL.so.1\""
#endif

typedef EGLDisplay (*get_display_fn)(EGLNativeDisplayType);
typedef EGLDisplay (*get_platform_display_fn)(EGLenum, void *, const EGLAttrib *);
typedef EGLDisplay (*get_platform_display_ext_fn)(EGLenum, void *, const EGLint *);
typedef __eglMustCastToProperFunctionPointerType (*get_proc_fn)(const char *);

static void *real_handle(void) {
  static void *h = NULL;
  if (!h) h = dlopen(BLENDTORCH_REAL_LIBEGL, RTLD_NOW | RTLD_LOCAL);
  return h;
}

static void *real(const char *name) {
  void *h = real_handle();
  return h ? dlsym(h, name) : NULL;
}

/* The PCI address of a DRM node (/dev/dri/cardN or renderDN), lower case, 4-digit domain. */
static int drm_pci(const char *node, char *out, size_t len) {
  const char *base = strrchr(node, '/');
  char link[PATH_MAX], target[PATH_MAX];
  snprintf(link, sizeof link, "/sys/class/drm/%s/device", base ? base + 1 : node);
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n <= 0) return 0;
  target[n] = 0;
  const char *pci = strrchr(target, '/');
  snprintf(out, len, "%s", pci ? pci + 1 : target);
  for (char *c = out; *c; ++c) *c = (char)((*c >= 'A' && *c <= 'Z') ? *c + 32 : *c);
  return 1;
}

/* "00000000:3B:00.0" and "0000:3b:00.0" both become "0000:3b:00.0". */
static void normal_pci(const char *in, char *out, size_t len) {
  const char *colon = strchr(in, ':');
  if (colon && colon - in > 4) in = colon - 4;
  snprintf(out, len, "%s", in);
  for (char *c = out; *c; ++c) *c = (char)((*c >= 'A' && *c <= 'Z') ? *c + 32 : *c);
}

static EGLDisplay chosen_display(void) {
  static int done = 0;
  static EGLDisplay display = EGL_NO_DISPLAY;
  if (done) return display;
  done = 1;
  const char *want = getenv("BLENDTORCH_EGL_DEVICE");
  if (!want || !*want) return display;
  get_proc_fn gpa = (get_proc_fn)real("eglGetProcAddress");
  PFNEGLQUERYDEVICESEXTPROC query = gpa ? (PFNEGLQUERYDEVICESEXTPROC)gpa("eglQueryDevicesEXT") : NULL;
  PFNEGLQUERYDEVICESTRINGEXTPROC qstr = gpa ? (PFNEGLQUERYDEVICESTRINGEXTPROC)gpa("eglQueryDeviceStringEXT") : NULL;
  PFNEGLQUERYDEVICEATTRIBEXTPROC qattr = gpa ? (PFNEGLQUERYDEVICEATTRIBEXTPROC)gpa("eglQueryDeviceAttribEXT") : NULL;
  get_platform_display_ext_fn gpd = gpa ? (get_platform_display_ext_fn)gpa("eglGetPlatformDisplayEXT") : NULL;
  if (!query || !qstr || !gpd) {
    fprintf(stderr, "blendtorch-egl: BLENDTORCH_EGL_DEVICE=%s but this EGL has no device enumeration "
                    "(EGL_EXT_device_enumeration / EGL_EXT_platform_device): EGL's default device is used\n", want);
    return display;
  }
  EGLDeviceEXT devices[64];
  EGLint n = 0;
  if (!query(64, devices, &n) || n <= 0) {
    fprintf(stderr, "blendtorch-egl: BLENDTORCH_EGL_DEVICE=%s but EGL lists no device: EGL's default is used\n", want);
    return display;
  }
  int pick = -1;
  char wanted_pci[64] = "";
  long wanted_num = -1;
  if (strncmp(want, "pci:", 4) == 0) normal_pci(want + 4, wanted_pci, sizeof wanted_pci);
  else if (strncmp(want, "cuda:", 5) == 0) wanted_num = strtol(want + 5, NULL, 10);
  else if (strncmp(want, "index:", 6) == 0) wanted_num = strtol(want + 6, NULL, 10);
  else {
    fprintf(stderr, "blendtorch-egl: BLENDTORCH_EGL_DEVICE=%s is not pci:<bus id>, cuda:<n> or index:<n>: "
                    "EGL's default device is used\n", want);
    return display;
  }
  for (EGLint i = 0; i < n && pick < 0; ++i) {
    const char *ext = qstr(devices[i], EGL_EXTENSIONS);
    if (wanted_pci[0]) {
      EGLint attrs[2] = {EGL_DRM_DEVICE_FILE_EXT, EGL_DRM_RENDER_NODE_FILE_EXT};
      for (int a = 0; a < 2 && pick < 0; ++a) {
        const char *node = (ext && strstr(ext, "EGL_EXT_device_drm")) ? qstr(devices[i], attrs[a]) : NULL;
        char pci[64];
        if (node && drm_pci(node, pci, sizeof pci) && strcmp(pci, wanted_pci) == 0) pick = i;
      }
    } else if (strncmp(want, "cuda:", 5) == 0) {
      EGLAttrib cuda = -1;
      if (qattr && ext && strstr(ext, "EGL_NV_device_cuda") && qattr(devices[i], EGL_CUDA_DEVICE_NV, &cuda) &&
          cuda == wanted_num)
        pick = i;
    } else if (i == wanted_num) {
      pick = i;
    }
  }
  if (pick < 0) {
    fprintf(stderr, "blendtorch-egl: no EGL device matches BLENDTORCH_EGL_DEVICE=%s among %d:", want, (int)n);
    for (EGLint i = 0; i < n; ++i) {
      const char *ext = qstr(devices[i], EGL_EXTENSIONS);
      const char *node = (ext && strstr(ext, "EGL_EXT_device_drm")) ? qstr(devices[i], EGL_DRM_DEVICE_FILE_EXT) : NULL;
      fprintf(stderr, " [%d] %s (%s)", (int)i, node ? node : "no DRM node", ext ? ext : "");
    }
    fprintf(stderr, ": EGL's default device is used\n");
    return display;
  }
  display = gpd(EGL_PLATFORM_DEVICE_EXT, devices[pick], NULL);
  const char *ext = qstr(devices[pick], EGL_EXTENSIONS);
  const char *node = (ext && strstr(ext, "EGL_EXT_device_drm")) ? qstr(devices[pick], EGL_DRM_DEVICE_FILE_EXT) : NULL;
  fprintf(stderr, "blendtorch-egl: BLENDTORCH_EGL_DEVICE=%s -> EGL device %d of %d, %s (%s)%s\n", want, (int)pick,
          (int)n, node ? node : "no DRM node", ext ? ext : "", display == EGL_NO_DISPLAY ? ": no display, default used" : "");
  return display;
}

EGLDisplay eglGetDisplay(EGLNativeDisplayType native) {
  if (native == EGL_DEFAULT_DISPLAY) {
    EGLDisplay d = chosen_display();
    if (d != EGL_NO_DISPLAY) return d;
  }
  get_display_fn f = (get_display_fn)real("eglGetDisplay");
  return f ? f(native) : EGL_NO_DISPLAY;
}

EGLDisplay eglGetPlatformDisplay(EGLenum platform, void *native, const EGLAttrib *attribs) {
  if (platform == EGL_PLATFORM_SURFACELESS_MESA && native == EGL_DEFAULT_DISPLAY) {
    EGLDisplay d = chosen_display();
    if (d != EGL_NO_DISPLAY) return d;
  }
  get_platform_display_fn f = (get_platform_display_fn)real("eglGetPlatformDisplay");
  return f ? f(platform, native, attribs) : EGL_NO_DISPLAY;
}

EGLDisplay eglGetPlatformDisplayEXT(EGLenum platform, void *native, const EGLint *attribs) {
  if (platform == EGL_PLATFORM_SURFACELESS_MESA && native == EGL_DEFAULT_DISPLAY) {
    EGLDisplay d = chosen_display();
    if (d != EGL_NO_DISPLAY) return d;
  }
  get_proc_fn gpa = (get_proc_fn)real("eglGetProcAddress");
  get_platform_display_ext_fn f = gpa ? (get_platform_display_ext_fn)gpa("eglGetPlatformDisplayEXT") : NULL;
  return f ? f(platform, native, attribs) : EGL_NO_DISPLAY;
}

__eglMustCastToProperFunctionPointerType eglGetProcAddress(const char *name) {
  if (name && strcmp(name, "eglGetDisplay") == 0) return (__eglMustCastToProperFunctionPointerType)eglGetDisplay;
  if (name && strcmp(name, "eglGetPlatformDisplay") == 0) return (__eglMustCastToProperFunctionPointerType)eglGetPlatformDisplay;
  if (name && strcmp(name, "eglGetPlatformDisplayEXT") == 0)
    return (__eglMustCastToProperFunctionPointerType)eglGetPlatformDisplayEXT;
  get_proc_fn f = (get_proc_fn)real("eglGetProcAddress");
  return f ? f(name) : NULL;
}
