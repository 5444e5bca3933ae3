// Windows only (build-addon.js adds this file for win32 targets): the addon
// imports Node-API from "node.exe" through a delay-load import library, and
// this hook points that name at the process that loads the addon, which
// exports Node-API itself: node.exe, or Code.exe inside VS Code (where no
// module named node.exe exists). The first Node-API call resolves through it.
#include <windows.h>
#include <delayimp.h>

#include <cstring>

namespace {

FARPROC WINAPI hostProcessForNode(unsigned notify, PDelayLoadInfo info) {
  if (notify == dliNotePreLoadLibrary && info != nullptr && info->szDll != nullptr && _stricmp(info->szDll, "node.exe") == 0) {
    return reinterpret_cast<FARPROC>(GetModuleHandleW(nullptr));
  }
  return nullptr;
}

}  // namespace

// Read by the CRT's delay-load helper (__delayLoadHelper2) before it loads a DLL.
extern "C" {
PfnDliHook __pfnDliNotifyHook2 = hostProcessForNode;
}
